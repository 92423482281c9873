"""The optimizer's REST API and its client, wired together without sockets."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator

import httpx
import pytest

from infrax.bus.memory import MemoryBus
from infrax.model import ContainerType, PlanRequest, TaskDefinition
from infrax.optimizer.app import create_app
from infrax.optimizer.client import OptimizerClient
from infrax.optimizer.history import Sample
from infrax.optimizer.service import OFF_LOOP_FILES, OptimizerService
from infrax.store import Database
from tests.conftest import secured

LINUX = ContainerType(name="linux", tags=["linux"], overhead=10.0)


@pytest.fixture
async def service(db: Database, bus: MemoryBus) -> AsyncIterator[OptimizerService]:
    optimizer = OptimizerService(db, bus, files_per_partition=2)
    await optimizer.start()
    yield optimizer
    await optimizer.stop()


@pytest.fixture
async def http(service: OptimizerService, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    security, admin = await secured(db)
    transport = httpx.ASGITransport(app=create_app(service, security))
    async with httpx.AsyncClient(transport=transport, base_url="http://optimizer.test", headers=admin) as client:
        yield client


def plan_request() -> PlanRequest:
    return PlanRequest(
        project="p",
        tasks=[
            TaskDefinition(
                name="unit",
                files=["a.py", "b.py", "c.py", "d.py"],
                container_tag=["linux"],
                bootstrapper="run.sh",
                target_wall_time=30.0,
            ),
            TaskDefinition(
                name="docs", files=["index.md"], container_tag=["linux"], bootstrapper="run.sh", paths=["docs/"]
            ),
        ],
        container_types=[LINUX],
        changed_paths=["src/a.py"],
    )


async def test_explain_returns_the_reasons_and_the_expected_makespan(
    service: OptimizerService, http: httpx.AsyncClient
) -> None:
    await service.history.record(
        [
            Sample(
                "p",
                "unit",
                "linux",
                "r1",
                ["a.py", "b.py", "c.py", "d.py"],
                1,
                1,
                None,
                {"a.py": 20.0, "b.py": 10.0, "c.py": 5.0, "d.py": 5.0},
            )
        ]
    )
    response = await http.post("/api/v1/plans", params={"explain": "true"}, json=plan_request().wire())
    assert response.status_code == 200
    body = response.json()
    unit, docs = body["tasks"]
    assert [p["files"] for p in unit["partitions"]] == [["a.py"], ["b.py", "c.py", "d.py"]]  # 20 s each + 10 s
    assert unit["expectedMakespan"] == 30.0 and body["expectedMakespan"] == 30.0
    assert any("the fewest whose longest partition" in line for line in unit["explanation"])
    assert docs["skipped"] and docs["reason"].startswith("skipped:") and docs["explanation"]
    assert body["explanation"] and body["dispatchOrder"] == [[0, 1], [0, 2]]

    plain = (await http.post("/api/v1/plans", json=plan_request().wire())).json()
    assert plain["tasks"][0]["explanation"] is None and plain["explanation"] is None
    assert plain["tasks"][0]["partitions"] == unit["partitions"]


async def test_the_client_plans_and_shows_history(service: OptimizerService, http: httpx.AsyncClient) -> None:
    client = OptimizerClient(http)
    plan = await client.plan(plan_request())
    assert plan.tasks[0].explanation is None
    # No history: the target cannot be aimed at, so files_per_partition (2 here) decides.
    assert [p.files for p in plan.tasks[0].partitions] == [["a.py", "b.py"], ["c.py", "d.py"]]
    explained = await client.plan(plan_request(), explain=True)
    assert explained.tasks[0].explanation and any("no history" in line for line in explained.tasks[0].explanation)
    assert await client.history("p", "unit") == []
    await service.history.record([Sample("p", "unit", "linux", "r1", ["a.py"], 1, 1, 4.0, None)])
    rows = await client.history("p", "unit", "linux")
    assert [(r.file, r.estimate, r.samples, r.partition_index) for r in rows] == [("a.py", 4.0, 1, 1)]
    assert await client.history("p", "unit", "mac") == []


async def test_a_bad_request_says_what_is_wrong(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/v1/plans", json={"project": "p", "tasks": [], "containerTypes": []})
    assert response.status_code == 422 and "tasks" in response.json()["detail"]


def large_request() -> PlanRequest:
    files = [f"tests/t{i}.py" for i in range(OFF_LOOP_FILES)]
    return PlanRequest(
        project="p",
        tasks=[TaskDefinition(name="big", files=files, container_tag=["linux"], bootstrapper="run.sh", partitions=40)],
        container_types=[LINUX],
    )


async def test_a_large_request_is_planned_in_the_worker_process_as_it_would_be_inline(
    service: OptimizerService, http: httpx.AsyncClient
) -> None:
    planned = await OptimizerClient(http).plan(large_request())

    assert service.worker.pid is not None and service.worker.pid != os.getpid()
    assert planned == await service.plan(large_request())  # the planner's own answer, in this process
    assert sorted(f for p in planned.tasks[0].partitions for f in p.files) == sorted(large_request().tasks[0].files)


async def test_a_planning_worker_killed_is_replaced_and_the_plan_still_made(
    service: OptimizerService, http: httpx.AsyncClient
) -> None:
    await OptimizerClient(http).plan(large_request())
    victim = service.worker.pid
    assert victim is not None
    os.kill(victim, signal.SIGKILL)

    planned = await OptimizerClient(http).plan(large_request())

    assert len(planned.tasks[0].partitions) == 40
    assert service.worker.pid not in (None, victim)
