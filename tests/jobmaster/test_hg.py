"""Mercurial: a real repository's pushes start one job each, through the changegroup hook and polling."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema

from infrax.bus import Message, topics
from infrax.jobmaster import hg_hook
from tests.conftest import shared_path
from tests.jobmaster.conftest import BOTH_BACKENDS, HG, job_in, pulse_job_schema, wait_for

CONFIG = """version: 1
project: hello-hg
tasks:
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/run.sh
    bootstrapperArguments: ["--revision={revision}"]
    files: ["src/app.py"]
    maxRunTime: 60
"""
USER = "Alice <alice@infrax.invalid>"


def hg(cwd: Path, *args: str) -> str:
    return subprocess.run(
        [HG, "--cwd", str(cwd), *args],
        check=True,
        capture_output=True,
        text=True,
        env={"HGPLAIN": "1", "PATH": "/usr/bin:/bin", "HGRCPATH": ""},
    ).stdout.strip()


async def hg_push(client: Path) -> str:
    """`hg push` without blocking the event loop the job master (which the hook calls) runs in."""
    process = await asyncio.create_subprocess_exec(
        HG,
        "--cwd",
        str(client),
        "push",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={"HGPLAIN": "1", "PATH": "/usr/bin:/bin", "HGRCPATH": ""},
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


def make_server(path: Path) -> None:
    path.mkdir()
    hg(path, "init")
    (path / "ci").mkdir()
    (path / "ci" / "run.sh").write_text('#!/bin/sh\necho "testing $*"\n')
    (path / "src").mkdir()
    (path / "src" / "app.py").write_text("print('hello')\n")
    (path / ".infrax.yml").write_text(CONFIG)
    hg(path, "commit", "-A", "-u", USER, "-m", "base")


def three_changesets(server: Path, client: Path) -> list[str]:
    hg(server.parent, "clone", "-q", str(server), str(client))
    for n in range(3):
        (client / "src" / "app.py").write_text(f"print('hello {n}')\n")
        hg(client, "commit", "-u", USER, "-m", f"change {n}")
    return hg(client, "log", "-r", "outgoing()", "-T", "{node}\n").split()


@BOTH_BACKENDS
async def test_a_push_of_three_changesets_is_one_job_through_the_hook_and_polling(start_stack, tmp_path: Path) -> None:
    hooked, polled = tmp_path / "hooked", tmp_path / "polled"
    make_server(hooked)
    make_server(polled)
    infrax = await start_stack(hg_poll=[str(hooked), str(polled)], hg_poll_interval=0.2)
    jobmaster = infrax["jobmaster"]
    treeherder: list[dict[str, Any]] = []

    async def collect(message: Message) -> None:
        treeherder.append(message.body)

    assert infrax.stack.bus is not None
    await infrax.stack.bus.subscribe("test-hg-treeherder", topics.TREEHERDER, ["#"], collect)
    announced: list[dict[str, Any]] = []

    async def pushed(message: Message) -> None:
        announced.append(message.body["payload"])

    await infrax.stack.bus.subscribe("test-hg-pushes", topics.HG_PUSHES, ["#"], pushed)
    assert (await jobmaster.post("/api/v1/hg/poll")).json() == [], "what a repository had before is no push"
    # The hook's own token may report pushes and nothing else.
    assert infrax.stack.tokens is not None
    _, hook_token = await infrax.stack.tokens.create("hg hook", ["jobmaster:hg-push"])
    (hooked / ".hg" / "hgrc").write_text(
        f"[hooks]\nchangegroup.infrax = INFRAX_TOKEN={hook_token} {sys.executable} {hg_hook.__file__} "
        f"{jobmaster.base_url}\n"
    )

    # Through the hook, while the poller polls every 0.2 s.
    nodes = three_changesets(hooked, tmp_path / "hooked-clone")
    output = await hg_push(tmp_path / "hooked-clone")
    # Whether the hook or the poller recorded it first, the hook's answer is that push, all of it.
    assert "infrax: push 1 of 3 changesets" in output, output
    # A poll after the hook finds nothing new: the push is not recorded a second time.
    assert (await jobmaster.post("/api/v1/hg/poll")).json() == []
    jobs = (await jobmaster.get("/api/v1/jobs")).json()
    assert [(j["revision"], j["source"]) for j in jobs] == [(nodes[-1], "hg")], "not exactly one job for the tip"
    log = (await jobmaster.get("/api/v1/hg/json-pushes", params={"repository": str(hooked), "full": 1})).json()
    assert log["lastpushid"] == 1 and list(log["pushes"]) == ["1"]
    push = log["pushes"]["1"]
    assert [c["node"] for c in push["changesets"]] == nodes, "the push's changesets, tip last"
    assert push["changesets"][-1]["author"] == USER and push["changesets"][-1]["files"] == ["src/app.py"]
    assert isinstance(push["date"], int) and push["user"]
    reference = json.loads(shared_path("reference", "hg", "json-pushes-v2-full.example.json").read_text())
    example = next(iter(reference["pushes"].values()))
    assert log.keys() == reference.keys() and push.keys() == example.keys()
    assert push["changesets"][0].keys() == example["changesets"][0].keys()
    short = (await jobmaster.get("/api/v1/hg/json-pushes", params={"repository": str(hooked)})).json()
    assert short["pushes"]["1"]["changesets"] == nodes
    # Where Treeherder looks when the repository's URL is <public URL>/hg/<name>: `<url>/json-pushes/`.
    as_treeherder_asks = await jobmaster.get(f"/hg/{hooked.name}/json-pushes/?full=1&version=2")
    assert as_treeherder_asks.status_code == 200 and as_treeherder_asks.json() == log
    by_changeset = await jobmaster.get(f"/hg/{hooked.name}/json-pushes", params={"changeset": nodes[1][:12]})
    assert list(by_changeset.json()["pushes"]) == ["1"]
    assert (await jobmaster.get("/hg/no-such-repository/json-pushes/")).status_code == 404

    job = await job_in(jobmaster, jobs[0]["id"], "completed", "failed", "exception")
    assert job["state"] == "completed", job  # its bootstrapper came out of the repository through `hg cat`
    assert job["details"]["origin"]["pushId"] == 1 and job["details"]["changedPaths"] == ["src/app.py"]

    # ... and announced once as hg.mozilla.org does, naming the pushlog Treeherder then reads it from.
    async def first_announced() -> bool:
        return len(announced) >= 1

    await wait_for(first_announced, 10, "the push's hgpushes message")
    (announcement,) = announced
    assert announcement["heads"] == [nodes[-1]] and announcement["repo_url"].endswith(f"/hg/{hooked.name}")
    assert announcement["pushlog_pushes"][0]["pushid"] == 1
    assert announcement["pushlog_pushes"][0]["push_full_json_url"].endswith(
        "json-pushes?version=2&full=1&startID=0&endID=1"
    )

    # Through polling alone; a hook that reports the same push late adds nothing.
    nodes = three_changesets(polled, tmp_path / "polled-clone")
    await hg_push(tmp_path / "polled-clone")

    async def polled_job() -> list[dict[str, Any]]:
        return [j for j in (await jobmaster.get("/api/v1/jobs")).json() if j["revision"] == nodes[-1]]

    found = await wait_for(polled_job, 10, "the poller to find the push")
    late = await jobmaster.post(
        "/api/v1/hg/pushes",
        json={"repository": str(polled), "node": nodes[0], "nodeLast": nodes[-1], "user": "late-hook"},
    )
    assert late.status_code == 200, late.text
    assert (late.json()["pushId"], late.json()["jobId"], late.json()["created"]) == (1, found[0]["id"], False)
    assert late.json()["changesets"] == nodes
    assert (await jobmaster.post("/api/v1/hg/poll")).json() == []
    assert len((await jobmaster.get("/api/v1/jobs")).json()) == 2
    log = (await jobmaster.get("/api/v1/hg/json-pushes", params={"repository": str(polled), "full": 1})).json()
    assert [c["node"] for c in log["pushes"]["1"]["changesets"]] == nodes and log["lastpushid"] == 1
    assert log["pushes"]["1"]["user"] == "alice@infrax.invalid"  # polling knows no pusher: the tip's author

    async def second_announced() -> bool:
        return len(announced) >= 2

    await wait_for(second_announced, 10, "the polled push's hgpushes message")
    assert announced[1]["heads"] == [nodes[-1]] and announced[1]["repo_url"].endswith(f"/hg/{polled.name}")

    # Treeherder files the hg job under its push.
    schema = pulse_job_schema()
    mine = [m for m in treeherder if m["origin"]["revision"] == job["revision"]]
    assert mine and mine[-1]["state"] == "completed" and mine[-1]["result"] == "success"
    for message in mine:
        jsonschema.validate(message, schema)
        assert message["origin"] == {"project": "hello-hg", "revision": job["revision"], "id": 1}


async def test_infrax_push_of_an_hg_repository_and_bad_hook_reports(start_stack, tmp_path: Path) -> None:
    server = tmp_path / "server"
    make_server(server)
    infrax = await start_stack()
    jobmaster = infrax["jobmaster"]

    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(server)})  # HEAD: hg's tip
    assert pushed.status_code == 201, pushed.text
    job = pushed.json()
    assert job["revision"] == hg(server, "log", "-r", "tip", "-T", "{node}") and job["source"] == "cli"
    assert job["details"]["vcs"] == "hg" and job["details"]["changedPaths"] == [
        ".infrax.yml",
        "ci/run.sh",
        "src/app.py",
    ]
    assert (await job_in(jobmaster, job["id"], "completed", "failed", "exception"))["state"] == "completed"
    no_revision = await jobmaster.post("/api/v1/pushes", json={"repository": str(server), "revision": "nope"})
    assert no_revision.status_code == 422 and "no revision 'nope'" in no_revision.json()["detail"]

    not_hg = await jobmaster.post("/api/v1/hg/pushes", json={"repository": str(tmp_path), "node": "a" * 40})
    unknown = await jobmaster.post("/api/v1/hg/pushes", json={"repository": str(server), "node": "a" * 40})
    not_a_node = await jobmaster.post("/api/v1/hg/pushes", json={"repository": str(server), "node": "tip"})

    assert not_hg.status_code == 422 and "is not a Mercurial repository" in not_hg.json()["detail"]
    assert unknown.status_code == 422 and "a" * 40 in unknown.json()["detail"]
    assert not_a_node.status_code == 422 and "node" in not_a_node.json()["detail"]
    assert len((await jobmaster.get("/api/v1/jobs")).json()) == 1
