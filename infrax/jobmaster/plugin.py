"""The interface a project's business logic implements to turn a push into tasks.

A project plugs its own logic in through the Python entry point group `infrax.jobmasters`:

    [project.entry-points."infrax.jobmasters"]
    my-project = "my_package.ci:MyProjectLogic"

and the job master is started with `--logic my-project` (or `--logic my_package.ci:MyProjectLogic`).
infrax ships `reference`, which reads `.infrax.yml` from the repository at the pushed revision,
and `skip-docs` (`infrax.jobmaster.examples`), which decides in code.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any

from infrax.model import TaskDefinition

ENTRY_POINT_GROUP = "infrax.jobmasters"


class PushRejected(Exception):
    """The push cannot become a job (bad configuration, nothing to run); the message says why."""


async def _unknown_sizes() -> dict[str, int]:
    return {}


@dataclass(frozen=True)
class Push:
    """A revision to test, and ways to look into the repository at that revision."""

    repository: str
    revision: str
    branch: str | None
    changed_paths: list[str] | None
    source: str
    read_file: Callable[[str], Awaitable[bytes | None]]
    list_files: Callable[[], Awaitable[list[str]]]
    file_url: Callable[[str], str]  # where agents can fetch a file of this revision
    # Bytes of each file of the revision: how the optimizer weighs files it has no history of.
    file_sizes: Callable[[], Awaitable[dict[str, int]]] = field(default=_unknown_sizes)


@dataclass(frozen=True)
class Plan:
    project: str
    tasks: list[TaskDefinition]
    # Whether a newer head cancels the older heads' jobs (`infrax.jobmaster.checkout.supersedes`); None: the defaults.
    supersede: dict[str, Any] | None = None


class ProjectLogic(abc.ABC):
    """Per-project business logic: which tasks a push runs."""

    @abc.abstractmethod
    async def plan(self, push: Push) -> Plan:
        """The project's name and its tasks for this push; raise PushRejected to refuse it.

        An empty task list is allowed: the job then completes at once.
        """


def load_logic(name: str) -> ProjectLogic:
    """The logic registered as `name` in the entry point group, or a `module:Class` to import."""
    if name == "reference":
        from infrax.jobmaster.reference import InfraxYamlLogic

        return InfraxYamlLogic()
    if ":" in name:
        module, _, attribute = name.partition(":")
        try:
            logic = getattr(import_module(module), attribute)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"cannot load job master logic {name!r}: {error}") from error
        return _instance(logic, name)
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted({"reference", *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ValueError(f"no job master logic {name!r}; installed: {', '.join(known)}")
    return _instance(found[0].load(), name)


def _instance(factory: object, name: str) -> ProjectLogic:
    """A ProjectLogic subclass (or a factory of one) made into the instance the job master uses."""
    made = factory() if callable(factory) else factory
    if not isinstance(made, ProjectLogic):
        raise ValueError(f"job master logic {name!r} is not a ProjectLogic (it made a {type(made).__name__})")
    return made
