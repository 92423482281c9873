"""Workers on other machines (network namespaces with links of their own): they dial out to the
control plane, which never connects to them, and cannot reach each other."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from infrax.sample_project import break_one_test, make_sample_repo
from tests.fleet.hosts import Host, hosts
from tests.fleet.test_workers import ON_POOL, POOL, pool_token
from tests.jobmaster.conftest import commit, git, job_in, wait_for

PROBE = "import socket, sys\ntry: socket.create_connection((sys.argv[1], 9), 2)\nexcept OSError as e: print(e.errno)"


def start_worker(
    host: Host, provisioner: str, token_file: Path, home: Path, name: str, *options: str
) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "infrax.cli", "worker", provisioner, "--pool", "hardware"]
    command += ["--token-file", str(token_file), "--capacity", "2", "--name", name]
    command += ["--data-dir", str(home / name), "--run-as", "self", *options]
    log = (home / f"{name}.log").open("wb")
    return subprocess.Popen(host.command(*command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def joined_pool(
    infrax: Any, tmp_path: Path, *hosts_: Host, options: dict[int, list[str]] | None = None
) -> dict[str, subprocess.Popen[bytes]]:
    """`infrax worker` on each host (with `options` by the host's index), joined to the control
    plane's pool, by name."""
    port = infrax.stack.urls["provisioner"].rsplit(":", 1)[1]
    token_file = tmp_path / "pool.token"
    token_file.write_text(await pool_token(infrax))
    token_file.chmod(0o600)
    workers = {
        f"worker-{n}": start_worker(
            host,
            f"http://{host.gateway}:{port}",
            token_file,
            tmp_path,
            f"worker-{n}",
            *(options or {}).get(n, []),
        )
        for n, host in enumerate(hosts_)
    }

    async def joined() -> bool:
        listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
        return sum(1 for w in listed if w["present"]) == len(hosts_)

    await wait_for(joined, 30, f"{len(hosts_)} workers to join")
    return workers


async def control_plane(start_stack: Any, *hosts_: Host, **overrides: Any) -> Any:
    """Every component on this machine, listening where the hosts reach it, with a pool of workers."""
    gateways = [h.gateway for h in hosts_]
    return await start_stack(
        providers=POOL, container_types=ON_POOL, host="0.0.0.0", allowed_hosts=gateways, **overrides
    )


async def test_a_job_runs_on_workers_on_other_hosts_that_only_dial_out(
    start_stack: Any, tmp_path: Path, docker_url: str, agent_image: str, docker_client: Any
) -> None:
    """One worker runs `process` containers, the other containers of its host's own Podman."""
    with hosts(2) as (first, second):
        infrax = await control_plane(start_stack, first, second)
        port = infrax.stack.urls["provisioner"].rsplit(":", 1)[1]
        podman = {1: ["--engine", docker_url, "--image", agent_image]}
        workers = list((await joined_pool(infrax, tmp_path, first, second, options=podman)).values())
        try:
            repo = tmp_path / "sample"
            make_sample_repo(repo)
            broken = break_one_test(repo)
            pushed = await infrax["jobmaster"].post(
                "/api/v1/pushes", json={"repository": str(repo), "revision": broken}
            )
            assert pushed.status_code == 201, pushed.text
            job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=90)
            # Checked out on the workers, run there, the failing test's report fetched back.
            assert job["state"] == "failed" and "test_mul_2" in job["message"], job
            listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
            assert all(w["containers"] >= 1 for w in listed), listed  # both worked
            in_podman = docker_client.api.containers(filters={"label": "infrax.owner=worker-hardware-worker-1/worker"})
            assert in_podman, "the second worker's containers are its Podman's"
            for host in (first, second):
                # Nothing listens there but on its own loopback: there is nothing to connect to ...
                assert all(a.startswith(("127.0.0.1:", "[::1]:")) for a in host.listening()), host.listening()
                # ... and every connection it has, it opened, to the provisioner.
                outward = [(local, peer) for local, peer in host.connections() if not local.startswith("127.")]
                assert outward and all(peer == f"{host.gateway}:{port}" for _, peer in outward), outward
            # The workers' hosts cannot reach each other.
            probe = PROBE
            errno = first.run(sys.executable, "-c", probe, second.address).strip()
            assert errno == "101", f"the first host reached the second's address (errno {errno})"  # ENETUNREACH
        finally:
            for process in workers:
                stop(process)


def journalled_repo(tmp_path: Path, gate: Path) -> tuple[Path, Path, str]:
    """A project of one partition whose first run waits for `gate` and whose later runs do not;
    each run journals its start and its end. Returns (repo, journal, the first run's command line)."""
    journal = tmp_path / "journal"
    hang = f"sleep {random.randrange(100_000, 999_999)}"
    script = tmp_path / "journalled.sh"
    script.write_text(
        f'#!/bin/sh\necho "start $INFRAX_RUN" >> {journal}\n'
        f'if [ "$INFRAX_RUN" = 0 ]; then echo "$INFRAX_WORK_DIR" > {journal}.where; ( {hang} ) &\n'
        f"  while [ ! -f {gate} ]; do sleep 0.05; done; fi\n"
        f'echo "done $INFRAX_RUN" >> {journal}\n'
    )
    script.chmod(0o755)
    repo = tmp_path / "journalled"
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    task = f"{{name: journalled, containerTag: linux_x86_64, bootstrapper: {script}}}"
    commit(repo, {".infrax.yml": f"version: 1\nproject: journalled\ntasks:\n  - {task}\n"}, "journalled")
    return repo, journal, hang


async def test_a_worker_killed_mid_run_loses_nothing_and_leaves_nothing_running(
    start_stack: Any, tmp_path: Path
) -> None:
    repo, journal, hang = journalled_repo(tmp_path, tmp_path / "never")  # the first run hangs; the re-run ends
    where_file = Path(f"{journal}.where")
    with hosts(2) as (first, second):
        infrax = await control_plane(start_stack, first, second)
        workers = await joined_pool(infrax, tmp_path, first, second)
        try:
            pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
            assert pushed.status_code == 201, pushed.text

            async def running() -> bool:
                return where_file.exists() and bool(where_file.read_text().strip())

            await wait_for(running, 30, "the first run to start")
            assert subprocess.run(["pgrep", "-fx", hang], capture_output=True).returncode == 0
            (busy,) = [name for name in workers if f"/{name}-containers/" in where_file.read_text()]
            killed_at = datetime.now(UTC)
            os.kill(workers[busy].pid, signal.SIGKILL)  # the worker alone, as a crash would
            job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)
            assert job["state"] == "completed", job
            (partition,) = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
            assert partition.run == 1 and partition.queued_at is not None
            assert (partition.queued_at - killed_at).total_seconds() < infrax.stack.config.worker_grace
            # Done once, by the re-run; the first run never finished, and nothing of it runs on.
            assert journal.read_text().split() == ["start", "0", "start", "1", "done", "1"]

            async def gone() -> bool:
                return subprocess.run(["pgrep", "-fx", hang], capture_output=True).returncode == 1

            await wait_for(gone, 15, "the killed worker's run to end with it")
        finally:
            for process in workers.values():
                stop(process)


async def test_a_link_cut_shorter_than_the_grace_loses_nothing_and_runs_nothing_twice(
    start_stack: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    repo, journal, _ = journalled_repo(tmp_path, gate)
    with hosts(1) as (host,):
        infrax = await control_plane(start_stack, host, worker_grace=20)
        workers = await joined_pool(infrax, tmp_path, host)
        try:
            pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})

            async def started() -> bool:
                return journal.exists() and "start 0" in journal.read_text()

            await wait_for(started, 30, "the run to start")
            host.cut()

            async def away() -> bool:  # the provisioner noticed, and so did the worker (its pings)
                listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
                return not listed[0]["present"] and "reconnecting" in (tmp_path / "worker-0.log").read_text()

            await wait_for(away, 20, "both ends to notice the dead link")
            host.restore()

            async def back() -> bool:
                listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
                return bool(listed[0]["present"])

            await wait_for(back, 30, "the worker to come back")
            gate.touch()
            job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)
            assert job["state"] == "completed", job
            (partition,) = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
            assert partition.run == 0, "held through the cut, not re-run"
            assert journal.read_text().split() == ["start", "0", "done", "0"]
        finally:
            for process in workers.values():
                stop(process)


async def test_a_link_cut_longer_than_the_grace_re_runs_elsewhere_once_and_the_worker_s_run_is_gone(
    start_stack: Any, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    repo, journal, hang = journalled_repo(tmp_path, gate)
    with hosts(2) as (first, second):
        infrax = await control_plane(start_stack, first, second, worker_grace=5)
        workers = await joined_pool(infrax, tmp_path, first, second)
        try:
            pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})

            where_file = Path(f"{journal}.where")  # which worker runs it

            async def started() -> bool:
                return where_file.exists() and bool(where_file.read_text().strip())

            await wait_for(started, 30, "the first run to start")
            where = where_file.read_text()
            busy = next(h for n, h in enumerate((first, second)) if f"/worker-{n}-containers/" in where)
            busy.cut()
            job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)
            assert job["state"] == "completed", job
            (partition,) = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
            assert partition.run == 1, "given up after the grace, and run again on the other worker"

            async def fenced() -> bool:  # the cut-off worker stopped its run itself, before the re-run
                return subprocess.run(["pgrep", "-fx", hang], capture_output=True).returncode == 1

            await wait_for(fenced, 15, "the cut-off worker's run to stop")
            busy.restore()
            gate.touch()  # the first run, had it lived, would end now

            async def rejoined() -> bool:
                listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
                return all(w["present"] for w in listed)

            await wait_for(rejoined, 30, "the cut-off worker to come back")
            assert journal.read_text().split() == ["start", "0", "start", "1", "done", "1"]
            final = (await infrax["jobmaster"].get(f"/api/v1/jobs/{job['id']}")).json()
            assert final["state"] == "completed"
        finally:
            for process in workers.values():
                stop(process)
