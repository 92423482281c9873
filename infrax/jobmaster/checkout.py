"""What a trigger (the CLI, a GitHub webhook, an hg push) hands the job master to test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infrax.jobmaster.vcs import Source


@dataclass(frozen=True)
class Origin:
    """Where a job came from on a code host; a job may have several (a branch push and a pull request)."""

    host: str  # github | hg
    repository: str  # owner/name on GitHub; the repository's path or URL for hg
    ref: str  # pull/<number> | refs/heads/<branch> | push/<pushId>
    pull_request: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # shown in the job's details: pushId, user, event...


@dataclass(frozen=True)
class Checkout:
    """A resolved revision, where to read it, and what to tell about it."""

    source: Source  # the local repository or mirror the job master reads
    repository: str  # what the job names, and what agents clone (`{repository}`)
    revision: str  # the full changeset id
    branch: str | None
    changed_paths: list[str] | None
    trigger: str  # cli | github | hg: the job's `source`
    origin: Origin | None = None
    # Pushed by someone with write access (a branch, an hg push, the CLI, a pull request of the
    # repository itself): its runs get the project's secrets. A fork's pull request never is.
    trusted: bool = True
    # Messages announcing the event, written with the job it creates (a code host's push as
    # taskcluster-github publishes it, for Treeherder): (exchange, routing key, body).
    announcements: tuple[tuple[str, str, dict[str, Any]], ...] = ()


SUPERSEDE_DEFAULTS: dict[str, Any] = {"pullRequests": True, "branches": False}


def supersedes(policy: dict[str, Any] | None, origin: Origin, default_branch: str | None) -> bool:
    """Whether a new head of `origin` cancels its older heads' unfinished jobs, by the project's
    `supersede` of `.infrax.yml`: a pull request's, unless it says `pullRequests: false`; a branch's
    only where `branches` says so (`true`: every branch but the repository's default one; or the
    branches' names)."""
    policy = {**SUPERSEDE_DEFAULTS, **(policy or {})}
    if origin.pull_request is not None:
        return bool(policy["pullRequests"])
    if not origin.ref.startswith("refs/heads/"):
        return False  # an hg push id is no branch's head
    branch = origin.ref.removeprefix("refs/heads/")
    branches = policy["branches"]
    if branches is True:
        return default_branch is not None and branch != default_branch
    return isinstance(branches, list) and branch in branches
