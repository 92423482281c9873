"""A `docker` provider whose engine is on another host: reached over TLS with a client certificate,
its agents reached through that connection and through nothing else."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from infrax.config import ProviderConfig
from infrax.model import ContainerType
from infrax.sample_project import break_one_test, make_sample_repo
from tests.containers.tls_engine import front, make_certificates, tls_options
from tests.fleet.hosts import hosts
from tests.jobmaster.conftest import job_in

ENGINE_PORT = 2376  # Docker's, for TLS


async def test_a_job_runs_on_an_engine_of_another_host_over_tls(
    start_stack: Any, tmp_path: Path, docker_url: str, agent_image: str
) -> None:
    with hosts(1) as (engine_host,):
        certificates = make_certificates(tmp_path / "tls", engine_host.address)
        engine_socket = docker_url.removeprefix("unix://")
        listen = f"{engine_host.address}:{ENGINE_PORT}"
        with front(certificates, listen, engine_socket, engine_host.command()):
            options = tls_options(certificates, f"tcp://{listen}")
            options |= {"image": agent_image, "owner": f"test-{uuid.uuid4().hex[:10]}"}
            infrax = await start_stack(
                providers=[ProviderConfig("far", kind="docker", options=options)],
                container_types=[
                    ContainerType(name="linux_x86_64", tags=["linux_x86_64"], providers=["far"], max_concurrent=2)
                ],
            )
            repo = tmp_path / "sample"
            make_sample_repo(repo)
            broken = break_one_test(repo)
            pushed = await infrax["jobmaster"].post(
                "/api/v1/pushes", json={"repository": str(repo), "revision": broken}
            )
            assert pushed.status_code == 201, pushed.text
            job_id = pushed.json()["id"]
            job = await job_in(infrax["jobmaster"], job_id, "completed", "failed", "exception", timeout=120)
            # Checked out there, run there, its failing test's report fetched back: all through the engine.
            assert job["state"] == "failed" and "test_mul_2" in job["message"], job
            partitions = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
            failed = next(p for p in partitions if p.state == "failed")
            tests = (await infrax["executioner"].get(f"/api/v1/partitions/{failed.id}/tests")).json()
            assert any(t["outcome"] == "failed" and "test_mul_2" in t["testId"] for t in tests)
            # On the engine's host, only the engine's TLS port listens, and every connection to it
            # is the control plane's: no agent has a port of its own.
            assert engine_host.listening() == [listen], engine_host.listening()
            peers = {peer.rsplit(":", 1)[0] for local, peer in engine_host.connections() if local == listen}
            assert peers <= {engine_host.gateway}, peers
