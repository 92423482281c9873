"""What an operator reads: `/metrics` on every component (prometheus_client's text format), and a
server log of one line per lifecycle event, as text or JSON, without a line per polling request."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infrax.bus import topics
from infrax.config import CORE_COMPONENTS as COMPONENTS
from infrax.model import ContainerType
from infrax.sample_project import break_one_test, make_sample_repo
from tests.e2e.conftest import admin_token, script, start_up, task, wait_healthy, write_up_config
from tests.jobmaster.conftest import job_in

ONE = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=1, idle_timeout=60)]


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_every_component_serves_its_metrics(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(container_types=ONE)
    gate = tmp_path / "go"
    waits = script(tmp_path, "waits.sh", f"while [ ! -f {gate} ]; do sleep 0.05; done\n")
    submitted = await infrax.submit([task("t", waits, files=["a.py", "b.py", "c.py"], partitions=3, priority=5)])

    async def scheduler_metrics() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        answer = await infrax["scheduler"].get("/metrics")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
        return samples(answer.text)

    async with asyncio.timeout(30):  # one runs, two wait behind it: the queue by priority says so
        while value(await scheduler_metrics(), "infrax_scheduler_queued_partitions", priority="5") != 2:
            await asyncio.sleep(0.05)
    gate.touch()
    await infrax.wait_request(submitted["id"])

    async with asyncio.timeout(30):  # the relay publishes after the commit the request's state waited for
        while (
            value(found := await scheduler_metrics(), "infrax_bus_published_total", exchange=topics.PARTITIONS) < 3 * 4
        ):
            await asyncio.sleep(0.05)
    assert value(found, "infrax_scheduler_partitions", state="completed") == 3
    assert value(found, "infrax_scheduler_queued_partitions", priority="5") == 0
    assert value(found, "infrax_scheduler_dispatch_latency_seconds_count", container_type="linux_x86_64") == 3
    assert value(found, "infrax_bus_consumed_total", consumer="scheduler") >= 3
    executioner = samples((await infrax["executioner"].get("/metrics")).text)
    assert value(executioner, "infrax_executioner_runs_total", state="completed") == 3
    assert value(executioner, "infrax_executioner_active_runs") == 0
    optimizer = samples((await infrax["optimizer"].get("/metrics")).text)
    assert value(optimizer, "infrax_optimizer_planning_seconds_count", where="inline") == 1
    for component in COMPONENTS:  # each its own, and every one behind a token
        assert (await httpx.AsyncClient(base_url=str(infrax[component].base_url)).get("/metrics")).status_code == 401


async def test_the_server_log_has_a_line_per_lifecycle_event_and_none_per_poll(tmp_path: Path) -> None:
    config, ports = write_up_config(tmp_path)
    log = tmp_path / "up.log"
    process = start_up(config, log, "--log-format", "json")
    try:
        jobmaster = f"http://127.0.0.1:{ports['jobmaster']}"
        await wait_healthy(jobmaster, process)
        repo = tmp_path / "sample"
        good = make_sample_repo(repo)
        bad = break_one_test(repo)
        async with httpx.AsyncClient(base_url=jobmaster, headers=admin_token(tmp_path / "data")) as client:
            job_ids = []
            for revision in (good, bad):
                pushed = await client.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
                assert pushed.status_code == 201, pushed.text
                job_ids.append(pushed.json()["id"])
            for job_id in job_ids:
                await job_in(client, job_id, "completed", "failed", "exception", timeout=60)
            jobs = await client.get("/metrics")
            assert value(samples(jobs.text), "infrax_jobmaster_pushes_total", outcome="created") == 2
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    said = [r["message"] for r in records]

    def count(*words: str) -> int:
        return sum(1 for m in said if all(w in m for w in words))

    assert count("push of sample@", "created") == 2
    assert count("planned: 1 task(s) into 3 partition(s)") == 2
    assert count(f"sample@{good[:12]}) ended completed after") == 1
    assert count(f"sample@{bad[:12]}) ended failed after", "tests/test_2.py::Test2::test_mul_2") == 1
    assert count("container ", " started on ") >= 1
    assert not [m for m in said if "HTTP Request" in m or "/api/v1/capacity" in m], "a line per request"
    assert not [r for r in records if r["logger"].startswith("alembic")]
