"""Every push announced the way Treeherder's push ingestion reads one, whichever way it came in.

Treeherder files a job under a push it already has, and learns of pushes only from its sources:

- a GitHub push or pull request (webhook): taskcluster-github's message (`github_events`);
  Treeherder asks GitHub for the commits;
- `infrax push` of a git repository: a taskcluster-github push of a new branch with the commit in
  its body, which Treeherder takes from there, asking GitHub nothing;
- an hg push (hook, poll, `infrax push`): hg.mozilla.org's message on `exchange/hgpushes/v1`;
  Treeherder reads the push from `<public URL>/hg/<name>/json-pushes`.

A push is announced each time it is pushed, a revision that already has a job included: Treeherder
stores a push once per revision, so a repeat costs nothing, and it is how a push Treeherder missed
(its listener was down, its queue purged) reaches it.
"""

from __future__ import annotations

import uuid
from typing import Any

from infrax.bus import topics
from infrax.treeherder.github_events import Announcement, word

NO_COMMIT = "0" * 40  # taskcluster-github's `before` of a new branch: Treeherder reads the body's commits


def repository_name(repository: str) -> str:
    """The last path segment, without `.git`: `/srv/git/app.git` and `https://host/org/app` are `app`."""
    return repository.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git") or "repository"


def git_push(repository: str, branch: str, commit: dict[str, str]) -> Announcement:
    """`infrax push` of a git repository as a GitHub push of a new branch whose one commit is the
    revision: Treeherder takes the commits of such a push from the message, asking GitHub nothing.
    The repository's URL is the one pushed (Treeherder strips `.git`): its repository row names it."""
    owner = repository.rstrip("/").rsplit("/", 2)[-2] if repository.count("/") >= 2 else "local"
    name = repository_name(repository)
    author = {"name": commit["name"], "email": commit["email"]}
    event = {
        "ref": f"refs/heads/{branch}",
        "before": NO_COMMIT,
        "after": commit["id"],
        "created": True,
        "commits": [
            {"id": commit["id"], "message": commit["message"], "timestamp": commit["timestamp"], "author": author}
        ],
        "head_commit": {"id": commit["id"], "timestamp": commit["timestamp"], "author": author},
        "repository": {"name": name, "full_name": f"{owner}/{name}", "clone_url": repository},
        "pusher": author,
    }
    details = {
        "event.type": "push",
        "event.base.ref": event["ref"],
        "event.base.repo.name": name,
        "event.base.repo.url": repository,
        "event.base.repo.branch": branch,
        "event.base.sha": NO_COMMIT,
        "event.head.ref": event["ref"],
        "event.head.repo.name": name,
        "event.head.repo.url": repository,
        "event.head.repo.branch": branch,
        "event.head.sha": commit["id"],
        "event.head.user.email": commit["email"],
    }
    body = {
        "version": 1,
        "organization": word(owner),
        "repository": word(name),
        "installationId": 0,
        "eventId": str(uuid.uuid4()),
        "details": details,
        "body": event,
        "tasks_for": "github-push",
        "branch": branch,
    }
    return (topics.GITHUB_PUSH, f"primary.{word(owner)}.{word(name)}", body)


def hg_push(public_url: str, repository: str, push: dict[str, Any]) -> Announcement:
    """A recorded Mercurial push (`infrax.jobmaster.pushlog`) as hg.mozilla.org announces one.
    Treeherder's repository row names `<public URL>/hg/<name>`, which serves the pushlog."""
    name = repository_name(repository)
    repo_url = f"{public_url.rstrip('/')}/hg/{name}"
    push_id = int(push["push_id"])
    window = f"startID={push_id - 1}&endID={push_id}"
    body = {
        "payload": {
            "repo_url": repo_url,
            "heads": [push["tip"]],
            "pushlog_pushes": [
                {
                    "time": push["date"],
                    "pushid": push_id,
                    "user": push["pusher"],
                    "push_json_url": f"{repo_url}/json-pushes?version=2&{window}",
                    "push_full_json_url": f"{repo_url}/json-pushes?version=2&full=1&{window}",
                }
            ],
            "source": push.get("source") or "push",
        }
    }
    return (topics.HG_PUSHES, word(name), body)
