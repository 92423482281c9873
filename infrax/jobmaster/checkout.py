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
