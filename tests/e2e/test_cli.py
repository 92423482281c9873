"""The `infrax` command against a real `infrax up` process and a real git repository."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
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
    assert failed.returncode == 3, "a job that did not pass is exit code 3"
    assert "job: failed" in failed.stdout
    assert "AssertionError: 4 != 5" in failed.stdout, "the failing partition's log tail is not shown"

    listed = infrax("jobs", config=config)
    newest = infrax("jobs", "--limit", "1", config=config)
    assert listed.returncode == 0 and listed.stdout.count("sample") == 2, listed.stdout
    assert newest.returncode == 0 and newest.stdout.count("sample") == 1 and bad[:12] in newest.stdout

    # Ids by a prefix of 6 or more, partition ids and chunks in the table, JSON on every read.
    by_prefix = infrax("status", job_id[:6], config=config)
    assert by_prefix.returncode == 0 and partition["id"][:12] in by_prefix.stdout and "chunk" in by_prefix.stdout
    as_json = json.loads(infrax("status", job_id[:8], "--json", config=config).stdout)
    assert as_json["job"]["id"] == job_id and len(as_json["request"]["tasks"][0]["partitions"]) == 3
    red = json.loads(infrax("jobs", "--state", "failed", "--json", config=config).stdout)
    assert [j["revision"] for j in red] == [bad]
    red_id = red[0]["id"]
    by_chunk = infrax("logs", red_id[:7], "unit", "1", config=config)
    by_partition = infrax("logs", partition["id"][:10], "--json", config=config)
    assert by_chunk.returncode == 0 and "test files at " + bad in by_chunk.stdout
    assert json.loads(by_partition.stdout)["log"] == logs.stdout

    # Not found, or a chunk that is not there: exit code 4, one line on stderr, nothing on stdout.
    missing = infrax("status", "ffffff0000", config=config)
    no_chunk = infrax("logs", red_id, "unit", "9", config=config)
    for result in (missing, no_chunk):
        assert result.returncode == 4 and result.stdout == "" and "Traceback" not in result.stderr
    assert "no job or revision 'ffffff0000'" in missing.stderr and "chunks 1 to 3, not 9" in no_chunk.stderr

    # Its failed partition again, as its next run: the other two stay as they were.
    rerun = infrax("rerun", red_id[:6], "--failed", config=config)
    assert rerun.returncode == 0, rerun.stderr
    red_job = httpx.get(f"http://127.0.0.1:{ports['jobmaster']}/api/v1/jobs/{red_id}", headers=admin).json()
    deadline = time.monotonic() + 60
    while True:
        parts = httpx.get(
            f"http://127.0.0.1:{ports['scheduler']}/api/v1/task-requests/{red_job['requestId']}", headers=admin
        ).json()["tasks"][0]["partitions"]
        runs = sorted((p["run"], p["state"]) for p in parts)
        if runs == [(0, "completed"), (0, "completed"), (1, "failed")]:
            break
        assert time.monotonic() < deadline, runs
        time.sleep(0.2)
    nothing_failed = infrax("rerun", job_id, "--failed", config=config)
    assert nothing_failed.returncode == 1 and "no failed partition" in nothing_failed.stderr


def test_errors_are_one_clear_line_without_a_traceback(tmp_path: Path) -> None:
    config, _ = write_up_config(tmp_path)  # nothing listens on these ports

    unreachable = infrax("status", "some-job", config=config)
    assert unreachable.returncode == 1
    assert "jobmaster: unreachable at http://127.0.0.1:" in unreachable.stderr
    bad_config = infrax("status", "x", config=tmp_path / "missing.yml")
    assert bad_config.returncode == 1 and "cannot read config" in bad_config.stderr
    for result in (unreachable, bad_config):
        assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""


async def test_push_of_a_bad_revision_or_repository_is_refused_clearly(running_up, tmp_path: Path) -> None:
    config, _ = running_up
    repo = tmp_path / "sample"
    make_sample_repo(repo)

    no_revision = infrax("push", str(repo), "no-such-branch", config=config)
    not_a_repo = infrax("push", str(tmp_path), config=config)
    (repo / ".infrax.yml").write_text("tasks: [{name: x}]\n")
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "broken config"], check=True)
    bad_config = infrax("push", str(repo), "HEAD", config=config)

    assert no_revision.returncode == 1 and "no revision 'no-such-branch'" in no_revision.stderr
    assert not_a_repo.returncode == 1 and "jobmaster answered 422" in not_a_repo.stderr
    assert bad_config.returncode == 1
    assert ".infrax.yml: tasks[0] (x): containerTag: Field required" in bad_config.stderr
    for result in (no_revision, not_a_repo, bad_config):
        assert "Traceback" not in result.stdout + result.stderr


async def test_infrax_up_raises_its_open_files_limit_to_the_hard_one(tmp_path: Path) -> None:
    """A thousand workers are a thousand sockets: a soft limit of 256 would refuse most of them."""
    config, ports = write_up_config(tmp_path)
    command = ["prlimit", "--nofile=256:4096", sys.executable, "-m", "infrax.cli", "up", "--config", str(config)]
    process = subprocess.Popen(command, stdout=(tmp_path / "up.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        await wait_healthy(f"http://127.0.0.1:{ports['scheduler']}", process)
        limits = Path(f"/proc/{process.pid}/limits").read_text()
        (line,) = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
