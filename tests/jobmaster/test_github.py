"""GitHub webhooks: the real payloads of ../shared/reference/github-webhooks start and cancel jobs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import jsonschema

from infrax.jobmaster.github import signature
from tests.jobmaster.conftest import (
    BOTH_BACKENDS,
    GITHUB_REPOSITORY,
    SECRET,
    deliver,
    github_config,
    job_in,
    make_hello_world,
    payload,
    wait_for,
    with_revision,
)

PR_HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"  # the head revision in every pull_request example
PUSH_HEAD = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"  # the new branch's head in push_with-new-branch

# POST /repos/{owner}/{repo}/statuses/{sha}, as GitHub's REST API documents its body.
STATUS_BODY = {
    "type": "object",
    "required": ["state"],
    "additionalProperties": False,
    "properties": {
        "state": {"enum": ["error", "failure", "pending", "success"]},
        "target_url": {"type": ["string", "null"]},
        "description": {"type": ["string", "null"], "maxLength": 140},
        "context": {"type": "string"},
    },
}


@BOTH_BACKENDS
async def test_pull_request_opened_synchronize_closed_reopened(start_stack, tmp_path: Path, github_api) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_api))
    jobmaster = infrax["jobmaster"]

    opened = await deliver(
        jobmaster,
        "pull_request",
        with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, ids["pr1"]),
        "d-opened",
    )
    assert opened.status_code == 201, opened.text
    first = opened.json()["jobs"][0]
    assert (first["revision"], first["source"], first["project"]) == (ids["pr1"], "github", "hello-world")
    assert (
        first["details"]["origin"] | {"host": "github", "repository": GITHUB_REPOSITORY, "pullRequest": 2}
        == first["details"]["origin"]
    )
    assert first["details"]["branch"] == "changes"

    synchronize = with_revision(payload("pull_request_synchronize.payload.json"), PR_HEAD, ids["pr2"])
    synchronized = await deliver(jobmaster, "pull_request", synchronize, "d-synchronize")
    assert synchronized.status_code == 201, synchronized.text
    second = synchronized.json()["jobs"][0]
    assert second["revision"] == ids["pr2"] and second["id"] != first["id"]
    # Against the fork point with master, not just the head commit: what the pull request brings.
    assert second["details"]["changedPaths"] == [".infrax.yml", "src/feature.py"]

    # The new head supersedes the old one (tests/jobmaster/test_supersede.py).
    assert [j["id"] for j in synchronized.json()["superseded"]] == [first["id"]]
    await job_in(jobmaster, first["id"], "cancelled")

    redelivered = await deliver(jobmaster, "pull_request", synchronize, "d-synchronize")
    assert redelivered.status_code == 200 and redelivered.json()["action"] == "duplicate"
    assert len((await jobmaster.get("/api/v1/jobs")).json()) == 2, "a redelivery started a second job"

    await job_in(jobmaster, second["id"], "running")
    closed = await deliver(
        jobmaster,
        "pull_request",
        with_revision(payload("pull_request_closed.payload.json"), PR_HEAD, ids["pr2"]),
        "d-closed",
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["action"] == "cancelled"
    assert [j["id"] for j in closed.json()["jobs"]] == [second["id"]]
    await job_in(jobmaster, second["id"], "cancelled")

    reopened = await deliver(
        jobmaster,
        "pull_request",
        with_revision(payload("pull_request_reopened.payload.json"), PR_HEAD, ids["pr2"]),
        "d-reopened",
    )
    assert reopened.status_code == 201, reopened.text
    again = reopened.json()["jobs"][0]
    assert again["id"] == second["id"] and again["state"] not in ("cancelled", "completed")
    assert (await job_in(jobmaster, second["id"], "running"))["requestId"] != second["requestId"]

    mirrors = list((tmp_path / "data" / "mirrors").iterdir())
    assert len(mirrors) == 1, "one bare mirror per repository, fetched again only when a revision is missing"
    assert (
        subprocess.run(
            ["git", "-C", str(mirrors[0]), "rev-parse", "--is-bare-repository"], capture_output=True, text=True
        ).stdout.strip()
        == "true"
    )
    for revision in (ids["pr1"], ids["pr2"], ids["docs"]):
        subprocess.run(["git", "-C", str(mirrors[0]), "cat-file", "-e", revision], check=True)

    posted = [r for r in github_api.requests if r["path"] == f"/repos/{GITHUB_REPOSITORY}/statuses/{ids['pr1']}"]
    assert [r["body"]["state"] for r in posted][-1] == "error"
    assert posted[-1]["body"]["description"] == f"cancelled: superseded by {ids['pr2']}"


async def test_pushes_run_branches_with_their_changed_paths_and_report_statuses(
    start_stack, tmp_path: Path, github_api
) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_api))
    jobmaster = infrax["jobmaster"]

    new_branch = with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, ids["code"])
    pushed = await deliver(jobmaster, "push", new_branch, "d-push")
    assert pushed.status_code == 201, pushed.text
    job = pushed.json()["jobs"][0]
    assert (job["revision"], job["details"]["branch"], job["details"]["changedPaths"]) == (
        ids["code"],
        "master",
        ["src/app.py"],
    )

    tag_deleted = await deliver(jobmaster, "push", payload("push_payload.json"), "d-tag-deleted")
    assert tag_deleted.status_code == 202 and tag_deleted.json()["action"] == "ignored"

    docs_only = json.loads(new_branch)
    docs_only.update(before=ids["code"], after=ids["docs"], created=False, head_commit=None, commits=[])
    docs = await deliver(jobmaster, "push", json.dumps(docs_only).encode(), "d-push-docs")
    assert docs.status_code == 201, docs.text
    docs_job = docs.json()["jobs"][0]
    assert docs_job["details"]["changedPaths"] == ["docs/guide.md"]

    finished = await job_in(jobmaster, job["id"], "completed", "failed", "exception")
    assert finished["state"] == "completed", finished
    skipped = await job_in(jobmaster, docs_job["id"], "completed")
    assert [t["state"] for t in skipped["tasks"]] == ["skipped"], "the optimizer ran a task no changed path needs"
    assert len((await jobmaster.get("/api/v1/jobs")).json()) == 2

    async def final_status_posted() -> bool:
        return any(r["body"]["state"] == "success" and r["path"].endswith(ids["code"]) for r in github_api.requests)

    await wait_for(final_status_posted, 10, "the success status")
    statuses = [r for r in github_api.requests if r["path"] == f"/repos/{GITHUB_REPOSITORY}/statuses/{ids['code']}"]
    assert statuses[0]["body"]["state"] == "pending" and statuses[-1]["body"]["state"] == "success"
    for request in github_api.requests:
        assert request["path"].startswith(f"/repos/{GITHUB_REPOSITORY}/statuses/")
        jsonschema.validate(request["body"], STATUS_BODY)
        assert request["body"]["context"] == "infrax/hello-world"
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers["accept"] == "application/vnd.github+json"
        assert headers["authorization"] == "Bearer t0ken"
        assert headers["x-github-api-version"] == "2022-11-28"
        assert headers["content-type"] == "application/json"
    # "Details" opens the job's page on the dashboard (for whoever signed in there).
    target = statuses[-1]["body"]["target_url"]
    assert target == f"{infrax.stack.urls['web']}/jobs/{job['id']}"
    async with httpx.AsyncClient(cookies={"infrax_token": infrax.stack.admin_token or ""}) as browser:
        page = await browser.get(target)
    assert page.status_code == 200 and job["id"] in page.text and "completed" in page.text


async def test_bad_deliveries_get_a_clear_4xx_and_start_nothing(start_stack, tmp_path: Path) -> None:
    repo = tmp_path / "Hello-World"
    ids = make_hello_world(repo)
    infrax = await start_stack(**github_config(repo, github_secrets={GITHUB_REPOSITORY: SECRET, "other/repo": "x"}))
    jobmaster = infrax["jobmaster"]
    body = with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, ids["pr1"])

    unsigned = await deliver(jobmaster, "pull_request", body, "d-1", secret=None)
    wrong = await deliver(jobmaster, "pull_request", body, "d-1", secret="guess")
    other_repository = await deliver(jobmaster, "pull_request", body, "d-1", secret="x")
    truncated = await deliver(jobmaster, "pull_request", body[: len(body) // 2], "d-1")
    truncated_in_transit = await deliver(
        jobmaster, "pull_request", body[: len(body) // 2], "d-1", **{"X-Hub-Signature-256": signature(SECRET, body)}
    )
    not_json = await deliver(jobmaster, "pull_request", b"action=opened&number=2", "d-1")
    not_an_object = await deliver(jobmaster, "pull_request", b'["opened"]', "d-1")
    no_event = await jobmaster.post(
        "/api/v1/github/webhook",
        content=body,
        headers={"X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": signature(SECRET, body)},
    )
    bad_field = json.loads(body)
    bad_field["pull_request"]["head"]["sha"] = 42
    wrong_type = await deliver(jobmaster, "pull_request", json.dumps(bad_field).encode(), "d-1")
    unknown_revision = await deliver(jobmaster, "pull_request", payload("pull_request_opened.payload.json"), "d-1")

    assert (unsigned.status_code, wrong.status_code, other_repository.status_code) == (401, 401, 401)
    assert "missing X-Hub-Signature-256" in unsigned.json()["detail"]
    assert "does not match" in wrong.json()["detail"]
    assert "secret of other/repo, not of Codertocat/Hello-World" in other_repository.json()["detail"]
    assert truncated.status_code == 400 and "not a JSON payload" in truncated.json()["detail"]
    assert truncated_in_transit.status_code == 401
    assert not_json.status_code == 400 and "not a JSON payload" in not_json.json()["detail"]
    assert not_an_object.status_code == 400 and "must be a JSON object" in not_an_object.json()["detail"]
    assert no_event.status_code == 400 and "X-GitHub-Event" in no_event.json()["detail"]
    assert wrong_type.status_code == 400 and "pull_request.head.sha must be a str" in wrong_type.json()["detail"]
    assert unknown_revision.status_code == 422 and PR_HEAD in unknown_revision.json()["detail"]
    for response in (
        unsigned,
        wrong,
        other_repository,
        truncated,
        not_json,
        not_an_object,
        no_event,
        wrong_type,
        unknown_revision,
    ):
        assert isinstance(response.json()["detail"], str) and "Traceback" not in response.text
    assert (await jobmaster.get("/api/v1/jobs")).json() == [], "a refused delivery started a job"

    ping = await deliver(
        jobmaster,
        "ping",
        json.dumps(
            {"zen": "Keep it logically awesome.", "hook_id": 1, "repository": {"full_name": GITHUB_REPOSITORY}}
        ).encode(),
        "d-ping",
    )
    assert ping.status_code == 200 and ping.json()["action"] == "pong"
    issues = await deliver(
        jobmaster,
        "issues",
        json.dumps({"action": "opened", "repository": {"full_name": GITHUB_REPOSITORY}}).encode(),
        "d-issues",
    )
    assert issues.status_code == 202 and issues.json()["action"] == "ignored"

    # A delivery that was refused was not consumed: its redelivery, now whole, is handled.
    retried = await deliver(jobmaster, "pull_request", body, "d-1")
    assert retried.status_code == 201, retried.text


def test_a_failed_job_s_status_says_what_failed_within_github_s_limit() -> None:
    from infrax.jobmaster.statuses import status_body
    from infrax.model import Job, JobTask, State, utcnow

    message = "task unit: partition 2/3: exited with code 1: FAIL: test_mul_2 (tests.test_2.Test2); " + "x" * 300
    job = Job(
        id="j1",
        project="sample",
        revision="a" * 40,
        repository="/r",
        source="github",
        state=State.FAILED,
        message=message,
        created_at=utcnow(),
        updated_at=utcnow(),
        tasks=[JobTask(id="t", name="unit", state=State.FAILED, message=message[11:])],
    )
    body = status_body(job, "http://infrax.invalid/jobs/j1")
    assert body["state"] == "failure" and body["description"] == ("failed: " + message)[:140]
