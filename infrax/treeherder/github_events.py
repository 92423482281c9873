"""A GitHub event as taskcluster-github publishes it (`exchange/taskcluster-github/v1/push` and
`/pull-request`, version 1 with version 0's `details`): how a stock Treeherder learns of a GitHub
project's pushes. Treeherder reads `details` (the repository URL, branch, base and head) and asks
GitHub for the commits, or takes them from `body` for a new branch."""

from __future__ import annotations

import re
from typing import Any

from infrax.bus import topics

Announcement = tuple[str, str, dict[str, Any]]  # exchange, routing key, body
_STRIPPED = re.compile(r"[^A-Za-z0-9_%-]")


def word(name: str) -> str:
    """taskcluster-github's routing key words: `.` becomes `%`, other specials but - and _ go."""
    return _STRIPPED.sub("", name.replace(".", "%")) or "_"


def _owner_and_name(payload: dict[str, Any]) -> tuple[str, str]:
    full = str(payload["repository"]["full_name"])
    owner, _, name = full.partition("/")
    return owner, name


def _installation(payload: dict[str, Any]) -> int:
    installation = payload.get("installation")
    return int(installation["id"]) if isinstance(installation, dict) and isinstance(installation.get("id"), int) else 0


def push_message(payload: dict[str, Any], delivery: str) -> Announcement:
    owner, name = _owner_and_name(payload)
    ref = str(payload["ref"])
    branch = ref.removeprefix("refs/heads/")
    repo_url = str(payload["repository"].get("clone_url") or payload["repository"].get("html_url"))
    details = {
        "event.type": "push",
        "event.base.ref": ref,
        "event.base.repo.name": name,
        "event.base.repo.url": repo_url,
        "event.base.repo.branch": branch,
        "event.base.sha": str(payload.get("before") or "0" * 40),
        "event.base.user.login": str((payload.get("sender") or {}).get("login", "")),
        "event.head.ref": ref,
        "event.head.repo.name": name,
        "event.head.repo.url": repo_url,
        "event.head.repo.branch": branch,
        "event.head.sha": str(payload["after"]),
        "event.head.user.login": str((payload.get("sender") or {}).get("login", "")),
        "event.head.user.email": str((payload.get("pusher") or {}).get("email") or ""),
    }
    body = {
        "version": 1,
        "organization": word(owner),
        "repository": word(name),
        "installationId": _installation(payload),
        "eventId": delivery,
        "details": details,
        "body": payload,
        "tasks_for": "github-push",
        "branch": branch,
    }
    return (topics.GITHUB_PUSH, f"primary.{word(owner)}.{word(name)}", body)


def pull_request_message(payload: dict[str, Any], delivery: str) -> Announcement:
    owner, name = _owner_and_name(payload)
    pull = payload["pull_request"]
    base, head = pull["base"], pull["head"]
    head_repo = head.get("repo") or base["repo"]  # a deleted fork has none
    details = {
        "event.type": f"pull_request.{payload['action']}",
        "event.pullNumber": str(pull["number"]),
        "event.base.ref": str(base["ref"]),
        "event.base.repo.name": name,
        "event.base.repo.url": str(base["repo"]["clone_url"]),
        "event.base.repo.branch": str(base["ref"]),
        "event.base.sha": str(base["sha"]),
        "event.base.user.login": str((base.get("user") or {}).get("login", "")),
        "event.head.ref": str(head["ref"]),
        "event.head.repo.name": str(head_repo.get("name", name)),
        "event.head.repo.url": str(head_repo["clone_url"]),
        "event.head.repo.branch": str(head["ref"]),
        "event.head.sha": str(head["sha"]),
        "event.head.user.login": str((head.get("user") or {}).get("login", "")),
    }
    body = {
        "version": 1,
        "organization": word(owner),
        "repository": word(name),
        "action": str(payload["action"]),
        "installationId": _installation(payload),
        "eventId": delivery,
        "details": details,
        "body": payload,
        "tasks_for": "github-pull-request",
        "branch": str(head["ref"]),
    }
    key = f"primary.{word(owner)}.{word(name)}.{word(str(payload['action']))}"
    return (topics.GITHUB_PULL_REQUEST, key, body)
