"""Workers that dial out: a pool of `infrax worker`s runs a job's partitions, checkout and artifacts
included, over the one connection each holds to the provisioner."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.parser import text_string_to_metric_families

from infrax.config import ProviderConfig
from infrax.fleet.protocol import Answer, Close, Hello, Open, Welcome, decode, encode, frame
from infrax.fleet.worker import Worker, WorkerRefused, connect_url
from infrax.model import ContainerType
from infrax.provisioner.providers.docker import DockerProvider
from infrax.provisioner.providers.process import ProcessProvider
from infrax.sample_project import break_one_test, make_sample_repo
from tests.jobmaster.conftest import BOTH_BACKENDS, commit, git, job_in, wait_for

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
        page = await infrax["web"].get("/workers")  # the dashboard lists them too
        assert page.status_code == 200 and all(f"<td>{name}</td>" in page.text for name in ("w1", "w2"))
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


def gated_repo(tmp_path: Path, name: str) -> tuple[Path, Path]:
    """A project of one partition whose run waits for a gate file; returns (repo, gate)."""
    gate = tmp_path / f"{name}.gate"
    script = tmp_path / f"{name}.sh"
    script.write_text(f"#!/bin/sh\nwhile [ ! -f {gate} ]; do sleep 0.05; done\necho passed\n")
    script.chmod(0o755)
    repo = tmp_path / name
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    task = f"{{name: gated, containerTag: linux_x86_64, bootstrapper: {script}}}"
    commit(repo, {".infrax.yml": f"version: 1\nproject: {name}\ntasks:\n  - {task}\n"}, name)
    return repo, gate


async def test_a_drained_worker_finishes_its_run_takes_nothing_new_and_can_then_be_removed(
    start_stack: Any, tmp_path: Path
) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)
    provisioner = infrax["provisioner"]
    async with worker(infrax, tmp_path, "w1", token) as one, worker(infrax, tmp_path, "w2", token) as two:
        await asyncio.wait_for(asyncio.gather(one.connected.wait(), two.connected.wait()), 10)
        repo, gate = gated_repo(tmp_path, "first")
        first = (await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})).json()

        async def placed() -> bool:
            return bool(one.endpoints or two.endpoints)

        await wait_for(placed, 20, "the run's container")
        busy, idle = (one, two) if one.endpoints else (two, one)
        busy_id = next(w["id"] for w in (await provisioner.get("/api/v1/workers")).json() if w["name"] == busy.name)

        async def running_there() -> bool:  # the list says which worker holds the run
            listed = (await provisioner.get("/api/v1/workers")).json()
            return {w["name"]: w["runs"] for w in listed} == {busy.name: 1, idle.name: 0}

        await wait_for(running_there, 20, "the run counted on its worker")
        drained = await provisioner.post(f"/api/v1/workers/{busy_id}/drain")
        assert drained.status_code == 200 and drained.json()["draining"] is True
        refused = await provisioner.delete(f"/api/v1/workers/{busy_id}")
        assert refused.status_code == 409 and "drain it first" in refused.json()["detail"]
        gate.touch()  # what it runs, it finishes
        assert (await job_in(infrax["jobmaster"], first["id"], "completed", "failed", "exception"))["state"] == (
            "completed"
        )
        repo, gate = gated_repo(tmp_path, "second")
        gate.touch()
        second = (await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})).json()
        assert (await job_in(infrax["jobmaster"], second["id"], "completed", "failed", "exception"))["state"] == (
            "completed"
        )
        assert idle.endpoints, "the new run went to the worker that does not drain"

        async def emptied() -> bool:
            return not busy.endpoints

        await wait_for(emptied, 30, "the drained worker's idle container to go")
        assert (await provisioner.delete(f"/api/v1/workers/{busy_id}")).status_code == 204
        names = [w["name"] for w in (await provisioner.get("/api/v1/workers")).json()]
        assert names == [idle.name]
        assert (await provisioner.post(f"/api/v1/workers/{busy_id}/drain")).status_code == 404


async def test_a_worker_reaches_nothing_of_another_worker_s_runs(start_stack: Any, tmp_path: Path) -> None:
    """A worker of the same pool, hostile: it closes every channel number and answers every call
    number it can think of, then sends what only the provisioner may. The other worker's run is
    untouched, and the hostile one is cut off."""
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)
    async with worker(infrax, tmp_path, "honest", token) as honest:
        await asyncio.wait_for(honest.connected.wait(), 10)
        repo, gate = gated_repo(tmp_path, "victim")
        job = (await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})).json()

        async def running() -> bool:
            return bool(honest.channels)

        await wait_for(running, 20, "the honest worker's run to be followed")
        url = connect_url(infrax.stack.urls["provisioner"])
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as hostile:
            await hostile.send(encode(Hello(name="hostile", pool="hardware", capacity=1, agent_version="1")))
            assert isinstance(decode(str(await hostile.recv())), Welcome)
            for number in range(64):
                await hostile.send(encode(Close(channel=number)))
                await hostile.send(encode(Answer(id=number, error="forged")))
                await hostile.send(frame(number, b"forged output\n"))
            await hostile.send(encode(Open(channel=1, container_id=next(iter(honest.endpoints)))))
            with pytest.raises(websockets.exceptions.ConnectionClosed) as closed:
                await asyncio.wait_for(hostile.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
        gate.touch()
        done = await job_in(infrax["jobmaster"], job["id"], "completed", "failed", "exception")
        assert done["state"] == "completed", done
        (partition,) = [p for t in (await infrax.request(done["requestId"])).tasks for p in t.partitions]
        assert partition.run == 0  # never lost, never re-run
        log = (await infrax["executioner"].get(f"/api/v1/runs/{partition.id}-0/log")).text
        assert "passed" in log and "forged" not in log


async def test_a_worker_runs_its_partitions_in_its_own_podman(
    start_stack: Any, tmp_path: Path, docker_provider: Any
) -> None:
    """`infrax worker --engine`: its containers are its own engine's, reached through its connection
    like any other worker's, checkout and artifacts included."""
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)
    engine = DockerProvider("podman-worker", 2, docker_provider("podman").options)
    podman = Worker(infrax.stack.urls["provisioner"], "hardware", token, "podman-worker", 2, engine)
    running = asyncio.create_task(podman.run())
    try:
        await asyncio.wait_for(podman.connected.wait(), 10)
        repo = tmp_path / "sample"
        make_sample_repo(repo)
        broken = break_one_test(repo)
        pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": broken})
        job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=120)
        assert job["state"] == "failed" and "test_mul_2" in job["message"], job
        containers = await engine.list()
        assert containers and set(containers) <= set(podman.endpoints), "its engine's containers, the worker's"
        partitions = [p for t in (await infrax.request(job["requestId"])).tasks for p in t.partitions]
        failed = next(p for p in partitions if p.state == "failed")
        tests = (await infrax["executioner"].get(f"/api/v1/partitions/{failed.id}/tests")).json()
        assert any(t["outcome"] == "failed" and "test_mul_2" in t["testId"] for t in tests)
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await podman.close()


async def test_a_worker_whose_token_is_revoked_is_disconnected_and_cannot_come_back(
    start_stack: Any, tmp_path: Path
) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    infrax.stack.gateway.recheck = 0.2  # how often a connected worker's token is looked at again
    token_id, token = await infrax.stack.tokens.create("a worker", ["provisioner:worker:hardware"])
    provider = ProcessProvider("w", 1, {"root": str(tmp_path / "c"), "run_as": "self"})
    leaked = Worker(infrax.stack.urls["provisioner"], "hardware", str(token), "leaked", 1, provider)
    running = asyncio.create_task(leaked.run())
    await asyncio.wait_for(leaked.connected.wait(), 10)
    assert await infrax.stack.tokens.revoke(token_id)
    with pytest.raises(WorkerRefused, match="revoked"):
        await asyncio.wait_for(running, 10)  # its beats bring the check round within a second
    listed = (await infrax["provisioner"].get("/api/v1/workers")).json()
    assert [(w["name"], w["connected"]) for w in listed] == [("leaked", False)]
    with pytest.raises(WorkerRefused):  # and it cannot join again
        await asyncio.wait_for(leaked.run(), 10)


async def test_the_provisioner_s_metrics_count_its_workers_and_their_beats(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)

    async def scraped() -> dict[tuple[str, str], float]:
        text = (await infrax["provisioner"].get("/metrics")).text
        return {
            (sample.name, sample.labels.get("state", "")): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name.startswith("infrax_worker")
        }

    async with worker(infrax, tmp_path, "w1", token) as one:
        await asyncio.wait_for(one.connected.wait(), 10)

        async def beating() -> bool:
            return (await scraped()).get(("infrax_worker_beats_total", ""), 0) >= 2

        await wait_for(beating, 10, "two beats of the worker counted")
        seen = await scraped()
        assert seen[("infrax_workers", "present")] == 1 and seen[("infrax_workers", "away")] == 0
        assert seen[("infrax_workers_capacity", "")] == 2
    await one.close()

    async def away() -> bool:
        return (await scraped()).get(("infrax_workers", "away")) == 1

    await wait_for(away, 10, "the worker that left counted away")
    assert (await scraped())[("infrax_workers_capacity", "")] == 0


async def test_a_run_on_a_worker_is_cancelled_through_its_connection(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(providers=POOL, container_types=ON_POOL)
    token = await pool_token(infrax)
    async with worker(infrax, tmp_path, "w1", token) as one:
        await asyncio.wait_for(one.connected.wait(), 10)
        repo, _never = gated_repo(tmp_path, "cancelled")  # the gate never opens: only a cancel ends it
        job = (await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})).json()

        async def followed() -> bool:
            return bool(one.channels)

        await wait_for(followed, 20, "the run followed through the worker")
        cancelled = await infrax["jobmaster"].post(f"/api/v1/jobs/{job['id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        done = await job_in(infrax["jobmaster"], job["id"], "completed", "failed", "exception", "cancelled")
        assert done["state"] == "cancelled", done
        (partition,) = [p for t in (await infrax.request(done["requestId"])).tasks for p in t.partitions]
        assert partition.state == "cancelled" and partition.run == 0

        async def stopped() -> bool:  # the run's process is gone from the worker's container
            beat = (await infrax["provisioner"].get("/api/v1/containers")).json()
            return bool(beat) and all(c["state"] != "busy" for c in beat)

        await wait_for(stopped, 20, "the worker's container free again")
