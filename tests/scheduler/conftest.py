"""A scheduler on a real store, with the optimizer's real planner and a provisioner the test plays.

Nothing runs in the background: the test calls the steps the scheduler's loops call (`plan_next`,
`dispatch_batch`, `apply_run_statuses`) and reads what was stored and what was published.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from infrax.bus.base import Encoded
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import BusMessage, PartitionStatus, RequestStatus, RunStatus, TaskStatus
from infrax.executioner.client import ExecutionerClient
from infrax.model import (
    ContainerType,
    ExecutionPlan,
    OfferAnswer,
    PartitionOffer,
    PlanRequest,
    State,
    TaskDefinition,
    TaskRequest,
    TaskRequestSubmission,
)
from infrax.optimizer.client import OptimizerClient
from infrax.optimizer.planner import Planner
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler.service import Scheduler
from infrax.store import Database
from infrax.store.tables import partitions

LINUX = ContainerType(name="linux", tags=["linux"], max_concurrent=100)


def _nowhere(service: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://{service}.invalid")


class PlanningOptimizer(OptimizerClient):
    """The optimizer's own planner, in this process, without history."""

    def __init__(self) -> None:
        super().__init__(_nowhere("optimizer"))
        self.planner = Planner()

    async def plan(self, request: PlanRequest, *, explain: bool = False) -> ExecutionPlan:
        return self.planner.plan(request, {}, explain=explain)


class PlayedProvisioner(ProvisionerClient):
    """Takes offers while it has room, and records what it took and what it was asked to cancel."""

    def __init__(self, room: int = 1000) -> None:
        super().__init__(_nowhere("provisioner"))
        self.room = room
        self.offers: list[PartitionOffer] = []
        self.cancelled: list[str] = []

    async def container_types(self) -> list[ContainerType]:
        return [LINUX]

    async def capacity(self) -> dict[str, int]:
        return {LINUX.name: self.room}

    async def offer(self, offers: list[PartitionOffer]) -> list[OfferAnswer]:
        answers = []
        for offer in offers:
            taken = self.room > 0
            self.room -= taken
            if taken:
                self.offers.append(offer)
            answers.append(OfferAnswer(run_id=offer.run_id, accepted=taken, reason=None if taken else "full"))
        return answers

    async def cancel(self, run_ids: list[str]) -> None:
        self.cancelled += run_ids


class RecordingBus(MemoryBus):
    """The in-process bus, keeping a copy of every body published, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, str, dict[str, Any]]] = []

    async def publish_all(self, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        messages = list(messages)
        await super().publish_all(messages)
        self.sent += messages

    async def publish(
        self, exchange: str, routing_key: str, body: dict[str, Any], *, headers: dict[str, Any] | None = None
    ) -> None:
        await super().publish(exchange, routing_key, body, headers=headers)
        self.sent.append((exchange, routing_key, body))

    async def publish_encoded(self, messages: Iterable[Encoded]) -> None:
        messages = list(messages)
        await super().publish_encoded(messages)
        self.sent += [(exchange, key, json.loads(data)) for exchange, key, data, *_ in messages]


class Harness:
    def __init__(self, scheduler: Scheduler, provisioner: PlayedProvisioner, bus: RecordingBus) -> None:
        self.scheduler = scheduler
        self.provisioner = provisioner
        self.bus = bus

    async def submit(self, *tasks: TaskDefinition) -> TaskRequest:
        """Submitted and planned: its partitions queued."""
        request = await self.scheduler.submit(TaskRequestSubmission(tasks=list(tasks), project="p"))
        assert await self.scheduler.plan_next()
        await self.scheduler.published()
        return await self.scheduler.get_request(request.id)

    async def dispatch(self) -> None:
        while await self.scheduler.dispatch_batch():
            pass
        await self.scheduler.published()

    async def news(self, *statuses: RunStatus) -> None:
        """Runs' news as one batch from the bus, then everything it changed published."""
        await self.scheduler.apply_run_statuses(list(statuses))
        await self.scheduler.published()

    async def force(self, partition_id: str, **values: Any) -> None:
        """Put a partition in a state directly (the test's set-up of a case)."""
        async with self.scheduler.db.begin() as conn:
            await conn.execute(update(partitions).where(partitions.c.id == partition_id).values(**values))

    def events(self) -> list[BusMessage]:
        """What the scheduler published so far, as messages."""
        kinds = {"partition-status": PartitionStatus, "task-status": TaskStatus, "task-request-status": RequestStatus}
        return [kinds[body["kind"]].model_validate(body) for _, _, body in self.bus.sent if body["kind"] in kinds]

    def partition_events(self, partition_id: str | None = None) -> list[tuple[State | None, State]]:
        """(previous, new) state of each partition status published, in order."""
        return [
            (e.previous_state, e.partition.state)
            for e in self.events()
            if isinstance(e, PartitionStatus) and partition_id in (None, e.partition.id)
        ]

    def forget_events(self) -> None:
        self.bus.sent.clear()


def news(offer: PartitionOffer, state: str, **fields: Any) -> RunStatus:
    """What the executioner (or the provisioner, for a lost run) publishes about an offered run."""
    return RunStatus(
        run_id=offer.run_id,
        partition_id=offer.partition_id,
        task_id=offer.task_id,
        request_id=offer.request_id,
        job_id=offer.job_id,
        run=offer.run,
        container_type=offer.container_type,
        container_id="c-1",
        state=state,
        **fields,
    )  # type: ignore[arg-type]


def definition(name: str = "unit", files: int = 1, **fields: Any) -> TaskDefinition:
    return TaskDefinition(
        name=name,
        files=[f"{name}/f{i}.py" for i in range(files)],
        container_tag=["linux"],
        bootstrapper="/bin/true",
        partitions=files,
        **fields,
    )


@pytest.fixture
async def harness(database: Database) -> AsyncIterator[Harness]:
    await database.create_schema()
    bus = RecordingBus()
    await bus.start()
    provisioner = PlayedProvisioner()
    executioner = ExecutionerClient(_nowhere("executioner"))
    # A failed partition is final here unless a test says otherwise (tests/scheduler/test_failure_reruns.py).
    scheduler = Scheduler(database, bus, PlanningOptimizer(), provisioner, executioner, rerun_failures=0)
    try:
        yield Harness(scheduler, provisioner, bus)
    finally:
        await scheduler.published()
        await bus.close()
        for client in (provisioner.http, executioner.http, scheduler.optimizer.http):
            await client.aclose()
