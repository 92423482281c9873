"""Per-project secrets: a branch push's runs get them, a fork's pull request never does, no log shows them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.jobmaster.conftest import (
    CLONE_URL,
    FAST,
    commit,
    deliver,
    github_config,
    job_in,
    make_hello_world,
    payload,
    with_revision,
)

DEPLOY_KEY = "s3cr3t-d3ploy-k3y-value"
PR_HEAD = "ec26c3e57ca3a959ca5aad62de7213c562f8c821"
PUSH_HEAD = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"
TELLS = {
    "ci/run.sh": '#!/bin/sh\necho "key=<$DEPLOY_KEY>"\nif [ -n "$DEPLOY_KEY" ]; then echo HAS-KEY; fi\n',
    ".infrax.yml": FAST.replace('    paths: ["src", "ci", ".infrax.yml"]\n', ""),  # whatever changed, it runs
}


async def _log_of(infrax, job: dict) -> str:  # type: ignore[no-untyped-def]
    request = (await infrax["scheduler"].get(f"/api/v1/task-requests/{job['requestId']}")).json()
    partition = request["tasks"][0]["partitions"][0]
    return (await infrax["executioner"].get(f"/api/v1/runs/{partition['id']}-{partition['run']}/log")).text


async def test_a_branch_push_gets_the_secrets_a_fork_never_and_no_log_shows_them(
    start_stack, tmp_path: Path, github_api
) -> None:
    repo = tmp_path / "Hello-World"
    make_hello_world(repo)
    on_master = commit(repo, TELLS, "print whether the key is there")
    fork = tmp_path / "fork"
    (fork).mkdir()
    infrax = await start_stack(
        **github_config(
            repo,
            github_api,
            project_secrets={"hello-world": {"DEPLOY_KEY": DEPLOY_KEY}},
            url_rewrites=[
                {"prefix": CLONE_URL, "replacement": str(repo)},
                {"prefix": "https://github.com/someone-else/Hello-World.git", "replacement": str(repo)},
            ],
        )
    )
    jobmaster = infrax["jobmaster"]

    pushed = await deliver(
        jobmaster, "push", with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, on_master), "d-push"
    )
    assert pushed.status_code == 201, pushed.text
    branch_job = await job_in(jobmaster, pushed.json()["jobs"][0]["id"], "completed", "failed", "exception")
    assert branch_job["state"] == "completed", branch_job
    branch_log = await _log_of(infrax, branch_job)
    assert "HAS-KEY" in branch_log and "key=<[redacted]>" in branch_log
    assert DEPLOY_KEY not in branch_log

    # The same change as a pull request from someone else's fork.
    body = json.loads(with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, on_master))
    body["pull_request"]["head"]["repo"]["full_name"] = "someone-else/Hello-World"
    body["pull_request"]["head"]["repo"]["clone_url"] = "https://github.com/someone-else/Hello-World.git"
    opened = await deliver(jobmaster, "pull_request", json.dumps(body).encode(), "d-fork")
    assert opened.status_code in (200, 201), opened.text
    fork_job = opened.json()["jobs"][0]
    # One revision is one job: pushed as a branch first, it is the branch's (trusted) job already.
    assert fork_job["id"] == branch_job["id"]

    fresh = commit(repo, {"src/app.py": "print('from a fork')\n"}, "a fork's change")
    body = json.loads(with_revision(payload("pull_request_opened.payload.json"), PR_HEAD, fresh))
    body["pull_request"]["head"]["repo"]["full_name"] = "someone-else/Hello-World"
    body["pull_request"]["head"]["repo"]["clone_url"] = "https://github.com/someone-else/Hello-World.git"
    opened = await deliver(jobmaster, "pull_request", json.dumps(body).encode(), "d-fork-2")
    assert opened.status_code == 201 and opened.json()["jobs"], opened.text
    fork_job = await job_in(jobmaster, opened.json()["jobs"][0]["id"], "completed", "failed", "exception")
    assert fork_job["state"] == "completed", fork_job
    assert fork_job["details"]["trusted"] is False and branch_job["details"]["trusted"] is True
    fork_log = await _log_of(infrax, fork_job)
    assert "key=<>" in fork_log and "HAS-KEY" not in fork_log


async def test_only_a_token_with_the_trusted_scope_submits_a_trusted_request(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(project_secrets={"p": {"KEY": "v"}})
    assert infrax.stack.tokens is not None
    _, token = await infrax.stack.tokens.create("p's submitter", ["scheduler:create-task-request:p"])
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    task = {"name": "t", "files": ["a"], "containerTag": ["linux_x86_64"], "bootstrapper": str(script)}
    headers = {"Authorization": f"Bearer {token}"}
    plain = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"project": "p", "tasks": [task]}, headers=headers
    )
    trusted = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"project": "p", "tasks": [task], "trusted": True}, headers=headers
    )
    assert plain.status_code == 201
    assert trusted.status_code == 403 and "scheduler:trusted:p" in trusted.json()["detail"]
