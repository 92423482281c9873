"""A new head supersedes its older heads: a pull request's next head cancels the jobs of the
earlier ones (Treeherder and GitHub see them cancelled, the reason naming the newer revision),
a default branch's new push does not, and a job something else also asked for runs on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infrax.bus import Message, topics
from infrax.jobmaster.checkout import Origin, supersedes
from infrax.jobmaster.plugin import PushRejected
from infrax.jobmaster.reference import InfraxYamlLogic
from tests.jobmaster.conftest import (
    BOTH_BACKENDS,
    FAST,
    GITHUB_REPOSITORY,
    commit,
    deliver,
    git,
    github_config,
    job_in,
    make_hello_world,
    payload,
    wait_for,
    with_revision,
)
from tests.jobmaster.test_github import PR_HEAD, PUSH_HEAD


async def pull_request_opened(
    start_stack: Any, tmp_path: Path, github_api: Any
) -> tuple[Any, Path, dict[str, str], dict[str, Any]]:
    """A stack, the Hello-World repository, its revisions, and the job of its pull request opened at pr1."""
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_api))
    opened = await deliver(
        infrax["jobmaster"],
        "pull_request",
        with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, ids["pr1"]),
        "d-opened",
    )
    assert opened.status_code == 201, opened.text
    return infrax, repo, ids, opened.json()["jobs"][0]


def synchronize(ids: dict[str, str], head: str) -> bytes:
    return with_revision(payload("pull_request_synchronize.payload.json"), PR_HEAD, ids[head])


@BOTH_BACKENDS
async def test_a_pull_request_s_new_head_cancels_the_older_head_s_job_with_the_reason(
    start_stack: Any, tmp_path: Path, github_api: Any
) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_api))
    treeherder: list[dict[str, Any]] = []

    async def collect(message: Message) -> None:
        treeherder.append(message.body)

    await infrax.stack.bus.subscribe("test-treeherder-jobs", topics.TREEHERDER, ["#"], collect)
    jobmaster = infrax["jobmaster"]
    opened = await deliver(
        jobmaster,
        "pull_request",
        with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, ids["pr1"]),
        "d-opened",
    )
    older = opened.json()["jobs"][0]
    await job_in(jobmaster, older["id"], "running")  # pr1's task sleeps: only a cancel ends it

    newer = await deliver(jobmaster, "pull_request", synchronize(ids, "pr2"), "d-synchronize")

    assert newer.status_code == 201, newer.text
    assert [j["id"] for j in newer.json()["superseded"]] == [older["id"]]
    reason = f"superseded by {ids['pr2']}"
    cancelled = await job_in(jobmaster, older["id"], "cancelled")
    assert cancelled["message"] == reason
    head = newer.json()["jobs"][0]
    assert (await jobmaster.get(f"/api/v1/jobs/{head['id']}")).json()["state"] not in ("cancelled", "completed")

    async def told_treeherder() -> bool:
        return any(
            m["origin"]["revision"] == ids["pr1"]
            and m["result"] == "canceled"
            and m["jobInfo"].get("summary") == reason
            for m in treeherder
        )

    await wait_for(told_treeherder, 20, "Treeherder's job message of the superseded run: canceled, with the reason")

    async def told_github() -> list[dict[str, Any]]:
        path = f"/repos/{GITHUB_REPOSITORY}/statuses/{ids['pr1']}"
        return [r for r in github_api.requests if r["path"] == path and r["body"]["state"] == "error"]

    (status, *_) = await wait_for(told_github, 20, "the superseded head's commit status")
    assert status["body"]["description"] == f"cancelled: {reason}"
    await jobmaster.post(f"/api/v1/jobs/{head['id']}/cancel")  # its task sleeps too


@BOTH_BACKENDS
async def test_a_default_branch_s_new_push_does_not_cancel_the_one_before(
    start_stack: Any, tmp_path: Path, github_api: Any
) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    git(repo, "checkout", "--quiet", "master")
    slow = commit(repo, {".infrax.yml": FAST.replace("ci/run.sh", "ci/slow.sh")}, "a slow master")
    after = commit(repo, {"src/app.py": "print('hello again')\n"}, "master moves on")
    infrax = await start_stack(**github_config(repo, github_api))
    jobmaster = infrax["jobmaster"]
    push = json.loads(with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, slow))
    push.update(ref="refs/heads/master", before=ids["docs"], created=False)
    first = (await deliver(jobmaster, "push", json.dumps(push).encode(), "d-push-1")).json()["jobs"][0]
    await job_in(jobmaster, first["id"], "running")

    push.update(before=slow, after=after)
    second = await deliver(jobmaster, "push", json.dumps(push).encode(), "d-push-2")

    assert second.status_code == 201, second.text
    assert "superseded" not in second.json()
    assert (await jobmaster.get(f"/api/v1/jobs/{first['id']}")).json()["state"] == "running"
    await jobmaster.post(f"/api/v1/jobs/{first['id']}/cancel")


@BOTH_BACKENDS
async def test_a_job_a_branch_push_also_asked_for_is_not_superseded(
    start_stack: Any, tmp_path: Path, github_api: Any
) -> None:
    infrax, _repo, ids, older = await pull_request_opened(start_stack, tmp_path, github_api)
    jobmaster = infrax["jobmaster"]
    await job_in(jobmaster, older["id"], "running")
    push = json.loads(with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, ids["pr1"]))
    push.update(ref="refs/heads/changes")  # the pull request's branch, pushed: a branch push asks for pr1 too
    also = await deliver(jobmaster, "push", json.dumps(push).encode(), "d-push-changes")
    assert also.status_code == 200 and also.json()["jobs"][0]["id"] == older["id"], also.text

    newer = await deliver(jobmaster, "pull_request", synchronize(ids, "pr2"), "d-synchronize")

    assert newer.status_code == 201, newer.text
    assert "superseded" not in newer.json()
    assert (await jobmaster.get(f"/api/v1/jobs/{older['id']}")).json()["state"] == "running"
    await jobmaster.post(f"/api/v1/jobs/{older['id']}/cancel")


def test_which_new_heads_supersede_by_the_project_s_word() -> None:
    pull_request = Origin("github", GITHUB_REPOSITORY, "pull/2", 2)
    feature, master = (Origin("github", GITHUB_REPOSITORY, f"refs/heads/{b}") for b in ("feature", "master"))
    hg = Origin("hg", "/repos/mozilla-central", "push/7")
    assert supersedes(None, pull_request, "master") and not supersedes({"pullRequests": False}, pull_request, "master")
    assert not supersedes(None, feature, "master") and not supersedes(None, master, "master")
    assert supersedes({"branches": True}, feature, "master") and not supersedes({"branches": True}, master, "master")
    assert supersedes({"branches": ["master"]}, master, "master")
    assert not supersedes({"branches": True}, hg, None), "an hg push id is no branch's head"


async def test_a_wrong_supersede_setting_refuses_the_push_saying_what_it_takes() -> None:
    class OnePush:
        repository, revision, branch = "/repos/p", "a" * 40, "main"

        async def read_file(self, path: str) -> str:
            return "tasks: []\nsupersede: {branches: yes-please}\n"

    with pytest.raises(PushRejected, match=r"supersede must be a mapping of pullRequests .* and branches"):
        await InfraxYamlLogic().plan(OnePush())  # type: ignore[arg-type]


async def test_a_job_a_person_also_pushed_is_not_superseded(start_stack: Any, tmp_path: Path, github_api: Any) -> None:
    infrax, repo, ids, older = await pull_request_opened(start_stack, tmp_path, github_api)
    jobmaster = infrax["jobmaster"]
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": ids["pr1"]})
    assert pushed.status_code == 200 and pushed.json()["id"] == older["id"], pushed.text

    newer = await deliver(jobmaster, "pull_request", synchronize(ids, "pr2"), "d-synchronize")

    assert newer.status_code == 201, newer.text
    assert "superseded" not in newer.json()
    assert (await jobmaster.get(f"/api/v1/jobs/{older['id']}")).json()["state"] != "cancelled"
    for job in (older, newer.json()["jobs"][0]):
        await jobmaster.post(f"/api/v1/jobs/{job['id']}/cancel")
