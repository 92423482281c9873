"""The `infrax` command against a real `infrax up` process and a real git repository."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from infrax.sample_project import break_one_test, make_sample_repo
from tests.e2e.conftest import admin_token, start_up, wait_healthy, write_up_config


def infrax(*args: str, config: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "infrax.cli", *args] + (["--config", str(config)] if config else [])
    return subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}
    )


@pytest.fixture
async def running_up(tmp_path: Path):  # type: ignore[no-untyped-def]
    config, ports = write_up_config(tmp_path, max_concurrent=3)
    process = start_up(config, tmp_path / "up.log")
    await wait_healthy(f"http://127.0.0.1:{ports['jobmaster']}", process)
    yield config, ports
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


async def test_push_status_and_logs_of_a_passing_and_a_failing_revision(running_up, tmp_path: Path) -> None:
    config, ports = running_up
    repo = tmp_path / "sample"
    good = make_sample_repo(repo)

    pushed = infrax("push", str(repo), good, config=config)

    assert pushed.returncode == 0, pushed.stdout + pushed.stderr
    job_id = re.search(r"job (\w+) for sample@", pushed.stdout).group(1)  # type: ignore[union-attr]
    assert "job: completed" in pushed.stdout
    assert pushed.stdout.count("completed") >= 4  # three partitions and the job

    again = infrax("push", str(repo), good, "--no-wait", config=config)
    assert again.returncode == 0 and job_id in again.stdout, "a second push of a revision made a second job"

    status = infrax("status", job_id, config=config)
    assert status.returncode == 0 and "1/3" in status.stdout and "3/3" in status.stdout
    by_revision = infrax("status", good[:10], config=config)
    assert by_revision.returncode == 0 and job_id[:12] in by_revision.stdout

    admin = admin_token(tmp_path / "data")
    job = httpx.get(f"http://127.0.0.1:{ports['jobmaster']}/api/v1/jobs/{job_id}", headers=admin).json()
    request = httpx.get(
        f"http://127.0.0.1:{ports['scheduler']}/api/v1/task-requests/{job['requestId']}", headers=admin
    ).json()
    partition = request["tasks"][0]["partitions"][0]
    logs = infrax("logs", partition["id"], config=config)
    assert logs.returncode == 0
    assert "running 2 test files at " + good in logs.stdout and "OK" in logs.stdout

    bad = break_one_test(repo)
    failed = infrax("push", str(repo), bad, config=config)
    assert failed.returncode == 2
    assert "job: failed" in failed.stdout
    assert "AssertionError: 4 != 5" in failed.stdout, "the failing partition's log tail is not shown"

    listed = infrax("jobs", config=config)
    newest = infrax("jobs", "--limit", "1", config=config)
    assert listed.returncode == 0 and listed.stdout.count("sample") == 2, listed.stdout
    assert newest.returncode == 0 and newest.stdout.count("sample") == 1 and bad[:12] in newest.stdout


def test_errors_are_one_clear_line_without_a_traceback(tmp_path: Path) -> None:
    config, _ = write_up_config(tmp_path)  # nothing listens on these ports

    unreachable = infrax("status", "some-job", config=config)
    assert unreachable.returncode == 1
    assert "jobmaster: unreachable at http://127.0.0.1:" in unreachable.stdout
    bad_config = infrax("status", "x", config=tmp_path / "missing.yml")
    assert bad_config.returncode == 1 and "cannot read config" in bad_config.stdout
    for result in (unreachable, bad_config):
        assert "Traceback" not in result.stdout + result.stderr


async def test_push_of_a_bad_revision_or_repository_is_refused_clearly(running_up, tmp_path: Path) -> None:
    config, _ = running_up
    repo = tmp_path / "sample"
    make_sample_repo(repo)

    no_revision = infrax("push", str(repo), "no-such-branch", config=config)
    not_a_repo = infrax("push", str(tmp_path), config=config)
    (repo / ".infrax.yml").write_text("tasks: [{name: x}]\n")
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "broken config"], check=True)
    bad_config = infrax("push", str(repo), "HEAD", config=config)

    assert no_revision.returncode == 1 and "no revision 'no-such-branch'" in no_revision.stdout
    assert not_a_repo.returncode == 1 and "jobmaster answered 422" in not_a_repo.stdout
    assert bad_config.returncode == 1
    assert ".infrax.yml: tasks[0] (x): containerTag: Field required" in bad_config.stdout
    for result in (no_revision, not_a_repo, bad_config):
        assert "Traceback" not in result.stdout + result.stderr
