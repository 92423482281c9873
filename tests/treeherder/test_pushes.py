"""Every push reaches Treeherder's push ingestion, whichever way it came in: `infrax push` of a git
repository (a taskcluster-github push whose commit Treeherder takes from the body), of a Mercurial
one (a push of the pushlog, announced on hg.mozilla.org's exchange), and a revision pushed again."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import jsonschema
from yarl import URL

from infrax.bus import Message, topics
from infrax.sample_project import make_sample_repo
from tests.jobmaster.conftest import BOTH_BACKENDS, wait_for
from tests.jobmaster.test_hg import hg, make_server
from tests.treeherder.test_github_events import github_schemas

__all__ = ["github_schemas"]


async def announced(infrax: Any, *exchanges: str) -> list[Message]:
    seen: list[Message] = []

    async def collect(message: Message) -> None:
        seen.append(message)

    for exchange in exchanges:  # as Treeherder's push listener binds them: `#`
        await infrax.stack.bus.subscribe(f"test-{exchange.rsplit('/', 1)[1]}", exchange, ["#"], collect)
    return seen


async def count(seen: list[Message], wanted: int) -> None:
    async def enough() -> bool:
        return len(seen) >= wanted

    await wait_for(enough, 15, f"{wanted} push messages")


def webhook_commits(body: dict[str, Any]) -> dict[str, Any]:
    """What Treeherder's GithubPushTransformer makes of a push whose base is all zeros
    (treeherder/etl/push_loader.py, `_process_webhook_commits`), as it reads it."""
    commits = body["body"]["commits"]
    head = commits[-1]
    return {
        "revision": head["id"],
        "push_timestamp": datetime.fromisoformat(head["timestamp"]).timestamp(),
        "author": head["author"]["email"],
        "revisions": [
            {"comment": c["message"], "author": f"{c['author']['name']} <{c['author']['email']}>", "revision": c["id"]}
            for c in commits
        ],
    }


@BOTH_BACKENDS
async def test_infrax_push_of_a_git_repository_is_a_push_treeherder_reads_without_asking_github(
    start_stack: Any, tmp_path: Path, github_schemas: dict[str, jsonschema.Draft6Validator]
) -> None:
    infrax = await start_stack()
    seen = await announced(infrax, topics.GITHUB_PUSH)
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo)
    jobmaster = infrax["jobmaster"]
    first = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert first.status_code == 201, first.text
    await count(seen, 1)
    (push,) = seen
    github_schemas[topics.GITHUB_PUSH].validate(push.body)
    assert push.routing_key == f"primary.{repo.parent.name}.sample"
    details = push.body["details"]
    # Treeherder matches its repository row by this URL and branch, and reads the commit from the body.
    assert details["event.head.repo.url"] == str(repo) and details["event.base.repo.branch"] == "main"
    assert details["event.base.sha"] == "0" * 40 and details["event.head.sha"] == revision
    read = webhook_commits(push.body)
    assert read["revision"] == revision and read["author"] == "demo@infrax.invalid"
    assert [r["revision"] for r in read["revisions"]] == [revision]

    # Pushed again (its job exists): announced again, for a Treeherder that missed it.
    again = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    await count(seen, 2)
    assert seen[1].body["details"]["event.head.sha"] == revision


@BOTH_BACKENDS
async def test_infrax_push_of_an_hg_repository_is_a_push_of_its_pushlog_announced_as_hg_mozilla_org_does(
    start_stack: Any, tmp_path: Path
) -> None:
    server = tmp_path / "server"
    make_server(server)
    base = hg(server, "log", "-r", "tip", "-T", "{node}")
    infrax = await start_stack()
    seen = await announced(infrax, topics.HG_PUSHES)
    jobmaster = infrax["jobmaster"]
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(server)})
    assert pushed.status_code == 201, pushed.text
    job = pushed.json()
    assert job["details"]["origin"]["pushId"] == 1 and job["source"] == "cli"

    await count(seen, 1)
    (message,) = seen
    payload = message.body["payload"]
    repo_url = f"{infrax.stack.urls['jobmaster']}/hg/server"
    assert message.routing_key == "server" and payload["repo_url"] == repo_url and payload["heads"] == [base]
    (entry,) = payload["pushlog_pushes"]
    assert entry["pushid"] == 1 and entry["user"] == "infrax push"
    # What Treeherder's HgPushTransformer fetches: the push, its revision the last changeset.
    full = URL(entry["push_full_json_url"])
    assert str(full).startswith(repo_url + "/json-pushes?")
    log = (await jobmaster.get(full.path, params=dict(full.query))).json()
    assert log["lastpushid"] == 1 and [c["node"] for c in log["pushes"]["1"]["changesets"]] == [base]

    # The same revision again: its job, its push, announced again; a new changeset: push 2.
    again = await jobmaster.post("/api/v1/pushes", json={"repository": str(server)})
    assert again.status_code == 200 and again.json()["id"] == job["id"]
    (server / "src" / "app.py").write_text("print('again')\n")
    hg(server, "commit", "-u", "bob@example.org", "-m", "next")
    tip = hg(server, "log", "-r", "tip", "-T", "{node}")
    second = await jobmaster.post("/api/v1/pushes", json={"repository": str(server)})
    assert second.status_code == 201 and second.json()["details"]["origin"]["pushId"] == 2
    await count(seen, 3)
    assert [m.body["payload"]["pushlog_pushes"][0]["pushid"] for m in seen] == [1, 1, 2]
    pushes = (await jobmaster.get("/hg/server/json-pushes/", params={"full": 1, "version": 2})).json()["pushes"]
    assert [c["node"] for c in pushes["2"]["changesets"]] == [tip]
