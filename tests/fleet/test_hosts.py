"""Workers on other machines (network namespaces with links of their own): they dial out to the
control plane, which never connects to them, and cannot reach each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from infrax.sample_project import break_one_test, make_sample_repo
from tests.fleet.hosts import Host, hosts
from tests.fleet.test_workers import ON_POOL, POOL, pool_token
from tests.jobmaster.conftest import job_in, wait_for

PROBE = "import socket, sys\ntry: socket.create_connection((sys.argv[1], 9), 2)\nexcept OSError as e: print(e.errno)"


def start_worker(host: Host, provisioner: str, token_file: Path, home: Path, name: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "infrax.cli", "worker", provisioner, "--pool", "hardware"]
    command += ["--token-file", str(token_file), "--capacity", "2", "--name", name]
    command += ["--data-dir", str(home / name), "--run-as", "self"]
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


async def test_a_job_runs_on_workers_on_other_hosts_that_only_dial_out(start_stack: Any, tmp_path: Path) -> None:
    with hosts(2) as (first, second):
        infrax = await start_stack(
            providers=POOL,
            container_types=ON_POOL,
            host="0.0.0.0",
            allowed_hosts=[first.gateway, second.gateway],
        )
        port = infrax.stack.urls["provisioner"].rsplit(":", 1)[1]
        token_file = tmp_path / "pool.token"
        token_file.write_text(await pool_token(infrax))
        token_file.chmod(0o600)
        workers = [
            start_worker(host, f"http://{host.gateway}:{port}", token_file, tmp_path, f"worker-{n}")
            for n, host in enumerate((first, second))
        ]
        try:

            async def both_joined() -> bool:
                listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
                return sum(1 for w in listed if w["connected"]) == 2

            await wait_for(both_joined, 30, "both workers to join")
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
