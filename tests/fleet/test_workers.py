"""Workers that dial out: a pool of `infrax worker`s runs a job's partitions, checkout and artifacts
included, over the one connection each holds to the provisioner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from infrax.config import ProviderConfig
from infrax.fleet.worker import Worker, WorkerRefused
from infrax.model import ContainerType
from infrax.provisioner.providers.process import ProcessProvider
from infrax.sample_project import break_one_test, make_sample_repo
from tests.jobmaster.conftest import BOTH_BACKENDS, job_in

POOL = [ProviderConfig("hardware", "pool")]
ON_POOL = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], providers=["hardware"], max_concurrent=4)]


@contextlib.asynccontextmanager
async def worker(infrax: Any, tmp_path: Path, name: str, token: str, pool: str = "hardware") -> AsyncIterator[Worker]:
    provider = ProcessProvider(name, 2, {"root": str(tmp_path / f"{name}-containers"), "run_as": "self"})
    joined = Worker(infrax.stack.urls["provisioner"], pool, token, name, 2, provider)
    running = asyncio.create_task(joined.run())
    try:
        yield joined
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError, WorkerRefused):
            await running
        await joined.close()


async def pool_token(infrax: Any, pool: str = "hardware") -> str:
    _, token = await infrax.stack.tokens.create(f"worker of {pool}", [f"provisioner:worker:{pool}"])
    return str(token)


@BOTH_BACKENDS
async def test_a_job_runs_on_workers_that_dialled_out(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)
    repo = tmp_path / "sample"
    make_sample_repo(repo)
    broken = break_one_test(repo)
    async with worker(infrax, tmp_path, "w1", token) as one, worker(infrax, tmp_path, "w2", token) as two:
        await asyncio.wait_for(asyncio.gather(one.connected.wait(), two.connected.wait()), 10)
        listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
        assert [(w["name"], w["connected"], w["capacity"]) for w in listed] == [("w1", True, 2), ("w2", True, 2)]
        pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": broken})
        assert pushed.status_code == 201, pushed.text
        job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)
        # Checked out, run, its failing test's report fetched back: all through the workers' connections.
        assert job["state"] == "failed" and "test_mul_2" in job["message"], job
        partitions = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
        assert len(partitions) == 3 and {p.state for p in partitions} == {"completed", "failed"}
        tests = (await infrax["executioner"].get(f"/api/v1/partitions/{partitions[0].id}/tests")).json()
        assert tests, "the run's JUnit report came back from the worker"
        assert one.endpoints or two.endpoints, "the containers are the workers'"


async def test_a_worker_with_another_pool_s_token_is_refused(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    other = await pool_token(infrax, "other")
    provider = ProcessProvider("w", 1, {"root": str(tmp_path / "c"), "run_as": "self"})
    intruder = Worker(infrax.stack.urls["provisioner"], "hardware", other, "w", 1, provider)
    with pytest.raises(WorkerRefused, match="missing scope provisioner:worker:hardware"):
        await asyncio.wait_for(intruder.run(), 10)
    no_token = Worker(infrax.stack.urls["provisioner"], "hardware", "ifx_nope", "w", 1, provider)
    with pytest.raises(WorkerRefused):
        await asyncio.wait_for(no_token.run(), 10)
    assert (await infrax["provisioner"].get("/api/v1/workers")).json() == []
