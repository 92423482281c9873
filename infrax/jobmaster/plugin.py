"""The interface a project's business logic implements to turn a push into tasks.

A project plugs its own logic in through the Python entry point group `infrax.jobmasters`:

    [project.entry-points."infrax.jobmasters"]
    my-project = "my_package.ci:MyProjectLogic"

and the job master is started with `--logic my-project`. infrax ships `reference`, which reads
`.infrax.yml` from the repository at the pushed revision.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

from infrax.model import TaskDefinition

ENTRY_POINT_GROUP = "infrax.jobmasters"


class PushRejected(Exception):
    """The push cannot become a job (bad configuration, nothing to run); the message says why."""


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


@dataclass(frozen=True)
class Plan:
    project: str
    tasks: list[TaskDefinition]


class ProjectLogic(abc.ABC):
    """Per-project business logic: which tasks a push runs."""

    @abc.abstractmethod
    async def plan(self, push: Push) -> Plan:
        """The project's name and its tasks for this push; raise PushRejected to refuse it.

        An empty task list is allowed: the job then completes at once.
        """


def load_logic(name: str) -> ProjectLogic:
    if name == "reference":
        from infrax.jobmaster.reference import InfraxYamlLogic

        return InfraxYamlLogic()
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = sorted({"reference", *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        raise ValueError(f"no job master logic {name!r}; installed: {', '.join(known)}")
    return found[0].load()()
