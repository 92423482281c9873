"""Scopes, in Taskcluster's manner: a token holds a list; a held scope ending in `*` covers every
scope that starts with what comes before the star, and `admin` covers everything.

The scopes each endpoint requires are listed in docs/security.md; each component's own calls to
the others use a token holding `SERVICE_SCOPES` of the components that run in its process.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

ADMIN: Final = "admin"
# What a scope may look like: words of letters, digits and `-_.:/`, with an optional final `*`.
SCOPE_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,199}\*?$|^\*$")

# What each component calls on the others.
SERVICE_SCOPES: Final[dict[str, tuple[str, ...]]] = {
    "scheduler": ("optimizer:plan", "provisioner:read", "provisioner:offer", "provisioner:cancel", "executioner:read"),
    "provisioner": ("executioner:runs", "executioner:cancel"),
    # A run's files and source are read with that run's own token, never the executioner's.
    "executioner": ("provisioner:release", "provisioner:access"),
    "optimizer": (),
    "web": (),  # its pages read and act with each viewer's own token
    "jobmaster": (
        "scheduler:create-task-request:*",
        "scheduler:attach-job:*",
        "scheduler:trusted:*",
        "scheduler:cancel:*",
        "scheduler:rerun:*",
        "scheduler:read",
        "executioner:read",  # the artifacts of runs, listed by the queue API for Treeherder
    ),
}


def covers(held: str, required: str) -> bool:
    """Whether one held scope covers the required one."""
    if held == ADMIN or held == required:
        return True
    return held.endswith("*") and required.startswith(held[:-1])


def satisfied(held: Iterable[str], required: str) -> bool:
    return any(covers(scope, required) for scope in held)


def could_satisfy(held: Iterable[str], prefix: str) -> bool:
    """Whether some scope `prefix + <anything>` is covered: the check made before the rest of the
    scope (a project, a job) is known from the request's body."""
    for scope in held:
        if scope == ADMIN or scope.startswith(prefix):
            return True
        if scope.endswith("*") and prefix.startswith(scope[:-1]):
            return True
    return False


def valid(scope: str) -> bool:
    return bool(SCOPE_PATTERN.match(scope))
