"""The attacks found by probing a running infrax, each made again: none of them does harm now.

Each test plays a hostile party with what it could really have: a token of its own where one
could be had, a bootstrapper that reads what its process can reach.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from sqlalchemy import select
from yarl import URL

from infrax.config import ProviderConfig
from infrax.sample_project import make_sample_repo
from infrax.store.tables import runs
from tests.e2e.conftest import script, task


async def _wait_running(infrax, request_id: str) -> dict:  # type: ignore[no-untyped-def]
    for _ in range(400):
        request = await infrax.request(request_id)
        running = [p for p in request.tasks[0].partitions if p.state == "running"]
        if running:
            return running[0]
        await asyncio.sleep(0.05)
    raise AssertionError("the partition never ran")


async def test_a_crafted_run_id_is_refused_at_the_edge_and_writes_nothing(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.log").write_text("keep me\n")
    offer = {
        "runId": "../../victim/pwn1",
        "partitionId": "../../victim/pwn1",
        "taskId": "t",
        "requestId": "r",
        "jobId": None,
        "taskName": "x",
        "index": 1,
        "count": 1,
        "run": 0,
        "containerType": "linux_x86_64",
        "files": [],
        "bootstrapper": "/bin/true",
        "bootstrapperArguments": [],
        "env": {},
        "maxRunTime": 10,
    }
    assignment = {"offer": offer, "containerId": "c", "host": "127.0.0.1", "port": 1, "secret": "s"}
    to_executioner = await infrax["executioner"].post("/api/v1/runs", json={"assignments": [assignment]})
    to_provisioner = await infrax["provisioner"].post("/api/v1/partitions", json={"offers": [offer]})
    for response in (to_executioner, to_provisioner):
        assert response.status_code == 422 and "runId" in response.text, response.text
    # A run id of the right shape for another partition is refused too.
    other = {**offer, "runId": "abc-0", "partitionId": "xyz"}
    assert (await infrax["provisioner"].post("/api/v1/partitions", json={"offers": [other]})).status_code == 422
    assert (victim / "important.log").read_text() == "keep me\n"
    assert sorted(p.name for p in victim.iterdir()) == ["important.log"]


async def test_a_busy_container_is_released_only_by_whoever_runs_its_run(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    done, gate = tmp_path / "done", tmp_path / "gate"
    # Busy until the attempts are over, however slow the machine: a run that ended would free it.
    held = script(tmp_path, "held.sh", f"while [ ! -f {gate} ]; do sleep 0.05; done\ntouch {done}\n")
    submitted = await infrax.submit([task("held", held)])
    partition = await _wait_running(infrax, submitted["id"])
    container = partition.container_id

    assert infrax.stack.tokens is not None
    _, stranger = await infrax.stack.tokens.create("a stranger", [])
    no_scope = await infrax["provisioner"].post(
        f"/api/v1/containers/{container}/release",
        json={"healthy": False},
        headers={"Authorization": f"Bearer {stranger}"},
    )
    assert no_scope.status_code == 403
    # Even with the scope (an admin's token, here) but not naming the run the container runs: refused.
    for body in ({"healthy": False}, {"runId": "another-0", "healthy": False}):
        refused = await infrax["provisioner"].post(f"/api/v1/containers/{container}/release", json=body)
        assert refused.status_code == 409, refused.text

    gate.touch()
    request = await infrax.wait_request(submitted["id"])
    assert request.state == "completed" and done.exists()


async def test_neither_the_host_environment_nor_an_agent_secret_reaches_a_bootstrapper(
    start_stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the operator's environment holds: a broker URL with its password, say.
    monkeypatch.setenv("INFRAX_BUS_PROBE", "amqp://infrax:s3cret@broker/")
    infrax = await start_stack()
    seen = tmp_path / "seen"
    probe = script(
        tmp_path,
        "probe.sh",
        f"""env > {seen}/env
for pid in $(ls /proc | grep -E '^[0-9]+$'); do
  cat /proc/$pid/environ 2>/dev/null | tr '\\0' '\\n' >> {seen}/environs
  cat /proc/$pid/cmdline 2>/dev/null | tr '\\0' ' ' >> {seen}/cmdlines; echo >> {seen}/cmdlines
done
""",
    )
    seen.mkdir()
    request = await infrax.wait_request((await infrax.submit([task("probe", probe, env={"MINE": "task-env"})]))["id"])
    assert request.state == "completed"

    env = dict(line.split("=", 1) for line in (seen / "env").read_text().splitlines() if "=" in line)
    assert env["MINE"] == "task-env" and env["INFRAX_RUN"] == "0"
    assert "INFRAX_BUS_PROBE" not in env and "INFRAX_AGENT_SECRET" not in env
    assert set(env) <= {"MINE", "PATH", "LANG", "LC_ALL", "TZ", "HOME", "PWD", "SHLVL", "OLDPWD", "_"} | {
        k for k in env if k.startswith("INFRAX_")
    }
    # No process's environment on this host shows an agent's secret (it came on a pipe).
    slots = infrax.stack.services["provisioner"].slots.values()
    secrets_in_use = {slot.secret for slot in slots}
    assert secrets_in_use
    readable = (seen / "environs").read_text() + (seen / "cmdlines").read_text()
    assert not any(secret in readable for secret in secrets_in_use)
    assert "INFRAX_AGENT_SECRET" not in readable


async def test_the_store_keeps_no_agent_secret_and_no_run_token(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    ok = script(tmp_path, "ok.sh", "exit 0\n")
    assert (await infrax.wait_request((await infrax.submit([task("ok", ok)]))["id"])).state == "completed"
    secrets_in_use = {slot.secret for slot in infrax.stack.services["provisioner"].slots.values()}
    assert infrax.stack.db is not None
    async with infrax.stack.db.begin() as conn:
        stored = [row.assignment for row in (await conn.execute(select(runs.c.assignment))).all()]
    assert stored and all(a["secret"] == "" and a["offer"]["runToken"] is None for a in stored)
    database = Path(infrax.stack.config.db.split(":///", 1)[1]).read_bytes()
    assert not any(secret.encode() in database for secret in secrets_in_use)
    assert b"ifr_" not in database


async def test_the_admin_token_file_is_its_owners_alone(start_stack) -> None:
    infrax = await start_stack()
    path = infrax.stack.admin_token_path
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == infrax.stack.admin_token


BAD_TASKS = {
    "a NUL in a task name": {"name": "a\u0000b"},
    "an env key with =": {"env": {"A=B": "x"}},
    "a newline in a file name": {"files": ["a\nb.py"]},
    "a relative bootstrapper": {"bootstrapper": "ci/run.sh"},
    "100,001 files in one task": {"files": [f"f{i}" for i in range(100_001)]},
}


@pytest.mark.parametrize("case", list(BAD_TASKS))
async def test_bad_task_fields_are_refused_at_submission_naming_the_field(
    start_stack, tmp_path: Path, case: str
) -> None:
    infrax = await start_stack()
    ok = script(tmp_path, "ok.sh", "exit 0\n")
    response = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"tasks": [{**task("t", ok), **BAD_TASKS[case]}]}
    )
    assert response.status_code == 422, response.text
    field = next(iter(BAD_TASKS[case]))
    assert f"tasks.0.{field}" in response.json()["detail"]
    assert (await infrax["scheduler"].get("/api/v1/task-requests")).json() == [], "something was stored"


async def test_a_request_too_large_to_run_is_refused_before_it_is_stored(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    ok = script(tmp_path, "ok.sh", "exit 0\n")
    huge = [task(f"t{i}", ok, [f"f{j}" for j in range(1000)], partitions=1000) for i in range(1000)]
    response = await infrax["scheduler"].post("/api/v1/task-requests", json={"tasks": huge})
    assert response.status_code == 422 and "at most 10000 partitions" in response.json()["detail"]
    # A body past 32 MiB is refused as it arrives, never parsed.
    too_big = await infrax["scheduler"].post(
        "/api/v1/task-requests", content=b"x" * (33 * 1024 * 1024), headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413
    assert (await infrax["scheduler"].get("/api/v1/task-requests")).json() == []


async def test_a_dotted_project_name_is_refused_stores_nothing_and_the_next_start_is_clean(
    start_stack, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    make_sample_repo(repo)
    config = (repo / ".infrax.yml").read_text().replace("project: sample", "project: my.project")
    (repo / ".infrax.yml").write_text(config)
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "a dotted project"], check=True)
    infrax = await start_stack()
    refused = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
    assert refused.status_code == 422 and "'my.project'" in refused.json()["detail"]
    assert (await infrax["jobmaster"].get("/api/v1/jobs")).json() == []
    await infrax.close()
    again = await start_stack()  # the same data directory: starts, and nothing is pending
    assert (await again["jobmaster"].get("/api/v1/jobs")).json() == []
    assert (await again["scheduler"].get("/api/v1/health")).status_code == 200


async def test_with_run_as_task_code_runs_unprivileged_and_cannot_read_the_admin_token(start_stack) -> None:
    # /tmp/pytest-of-root is root's alone: the bootstrapper and the containers' folders live where the
    # unprivileged user can reach them (docs/security.md: the containers' root must be traversable).
    scripts = Path(tempfile.mkdtemp(prefix="infrax-run-as-"))
    try:
        scripts.chmod(0o755)
        probe = script(scripts, "probe.sh", 'id -u\ncat "$1" >/dev/null 2>&1 && echo READ-IT || echo refused\n')
        provider = ProviderConfig("process", options={"run_as": "nobody", "python": "/usr/bin/python3"})
        infrax = await start_stack(providers=[provider], data_dir=scripts / "data")
        token_file = str(infrax.stack.admin_token_path)
        definition = task("probe", probe, bootstrapperArguments=[token_file])
        request = await infrax.wait_request((await infrax.submit([definition]))["id"])
        partition = request.tasks[0].partitions[0]
        log = (await infrax["executioner"].get(f"/api/v1/runs/{partition.id}-{partition.run}/log")).text
    finally:
        shutil.rmtree(scripts, ignore_errors=True)
    assert request.state == "completed", log
    assert "\n65534\n" in log and "refused" in log and "READ-IT" not in log


async def test_a_push_reads_only_repositories_the_policy_allows(start_stack, tmp_path: Path) -> None:
    allowed, private = tmp_path / "allowed", tmp_path / "private"
    make_sample_repo(allowed / "sample")
    make_sample_repo(private / "secret")
    (private / "secret" / "secret.txt").write_text("the launch codes\n")
    subprocess.run(["git", "-C", str(private / "secret"), "add", "-A"], check=True)
    subprocess.run(["git", "-C", str(private / "secret"), "commit", "-qm", "secret"], check=True)
    (allowed / "link").symlink_to(private / "secret")
    infrax = await start_stack(allowed_repositories=[str(allowed)])
    jobmaster = infrax["jobmaster"]
    port = URL(infrax.stack.urls["scheduler"]).port

    for repository, says in [
        (str(private / "secret"), "not under allowed_repositories"),
        (str(allowed / "link"), "not under allowed_repositories"),  # a symlink out of the root
        (f"file://{private / 'secret'}", "file:// URLs are refused"),
        (f"http://127.0.0.1:{port}/repo.git", "loopback or private address"),
        ("https://evil.example/repo.git", "add it to repository_hosts"),
        ("git@evil.example:owner/repo.git", "add it to repository_hosts"),
    ]:
        refused = await jobmaster.post("/api/v1/pushes", json={"repository": repository})
        assert refused.status_code == 422 and says in refused.json()["detail"], (repository, refused.text)
    assert (await jobmaster.get("/api/v1/jobs")).json() == []
    accepted = await jobmaster.post("/api/v1/pushes", json={"repository": str(allowed / "sample")})
    assert accepted.status_code == 201, accepted.text
