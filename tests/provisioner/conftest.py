"""A provisioner on real `process` containers (agent processes), with a recording executioner and bus.

Test doubles subclass the real thing at a seam: the executioner client records assignments instead
of calling an executioner, and `FlakyProvider` is the process provider with `create` failing on request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrax.bus import Message, topics
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import ContainerEvent, RunStatus
from infrax.executioner.client import ExecutionerClient
from infrax.model import ContainerType, ExecutionAssignment, PartitionOffer, new_id
from infrax.provisioner.providers import ProviderError
from infrax.provisioner.providers.process import ProcessProvider
from infrax.provisioner.service import Provisioner


class RecordingExecutioner(ExecutionerClient):
    """Takes every assignment and runs nothing: the test plays the executioner."""

    def __init__(self) -> None:
        super().__init__(httpx.AsyncClient(base_url="http://executioner.invalid"))
        self.assignments: list[ExecutionAssignment] = []

    async def execute(self, assignments: list[ExecutionAssignment]) -> list[str]:
        self.assignments += assignments
        return [a.offer.run_id for a in assignments]

    async def cancel(self, run_ids: list[str]) -> list[str]:
        return []


class FlakyProvider(ProcessProvider):
    """The process provider, whose `create` raises ProviderError while `failing` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failing = False
        self.attempts = 0

    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Any:
        self.attempts += 1
        if self.failing:
            raise ProviderError(f"{self.name} is out of order")
        return await super().create(container_id, container_type, secret)


class Harness:
    """A started provisioner and what it published."""

    def __init__(self, provisioner: Provisioner, executioner: RecordingExecutioner, bus: MemoryBus) -> None:
        self.provisioner = provisioner
        self.executioner = executioner
        self.bus = bus
        self.runs: list[RunStatus] = []
        self.events: list[ContainerEvent] = []

    async def listen(self) -> None:
        async def on_run(message: Message) -> None:
            self.runs.append(RunStatus.model_validate(message.body))

        async def on_event(message: Message) -> None:
            self.events.append(ContainerEvent.model_validate(message.body))

        await self.bus.subscribe("test-runs", topics.RUNS, ["#"], on_run)
        await self.bus.subscribe("test-containers", topics.CONTAINERS, ["#"], on_event)

    def slots(self, state: str | None = None, type_name: str | None = None) -> list[Any]:
        return [
            s
            for s in self.provisioner.slots.values()
            if (state is None or s.state == state) and (type_name is None or s.type.name == type_name)
        ]


async def wait_for(condition: Callable[[], Any], timeout: float = 15, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.05)


def make_offer(
    container_type: str = "linux", run: int = 0, partition_id: str | None = None, **fields: Any
) -> PartitionOffer:
    """One run of a partition of its own; any field may be given instead of its default."""
    partition_id = partition_id or new_id()
    defaults: dict[str, Any] = {
        "task_id": "task-1",
        "request_id": "request-1",
        "job_id": None,
        "task_name": "unit",
        "index": 0,
        "count": 1,
        "files": [],
        "bootstrapper": "/bin/true",
        "bootstrapper_arguments": [],
        "env": {},
        "max_run_time": 60,
        "project": "p",
        "revision": None,
    }
    return PartitionOffer(
        run_id=f"{partition_id}-{run}",
        partition_id=partition_id,
        run=run,
        container_type=container_type,
        **{**defaults, **fields},
    )


class ManualClock:
    """The provisioner's clock, moved by the test: ages and idle times without waiting for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def settled(made: Harness) -> None:
    """One maintenance pass run to its end, then whatever it published delivered: a sentinel event
    published after it reaches the harness, and the bus delivers in order."""
    await made.provisioner.maintain_once()
    marker = ContainerEvent(event="started", container_type="sentinel", container_id=new_id())
    await made.bus.publish(topics.CONTAINERS, "sentinel", marker.wire())
    await wait_for(lambda: any(e.container_id == marker.container_id for e in made.events), what="the sentinel")


MakeHarness = Callable[..., Any]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[MakeHarness]:
    """`await harness(types, providers=[...])`: a started provisioner; stopped (containers removed) after."""
    started: list[Harness] = []

    def provider(
        name: str = "process", capacity: int | None = None, cls: type[ProcessProvider] = ProcessProvider, **options: Any
    ) -> ProcessProvider:
        return cls(
            name,
            capacity,
            {"root": str(tmp_path / "containers" / name), "kill_grace": 0.5, "run_as": "self", **options},
        )

    async def make(
        types: list[ContainerType], providers: list[ProcessProvider] | None = None, **kwargs: Any
    ) -> Harness:
        bus = MemoryBus()
        await bus.start()
        executioner = RecordingExecutioner()
        provisioner = Provisioner(types, providers or [provider()], executioner, bus, **kwargs)
        made = Harness(provisioner, executioner, bus)
        await made.listen()
        await provisioner.start()
        started.append(made)
        return made

    make.provider = provider  # type: ignore[attr-defined]
    yield make
    for made in started:
        await made.provisioner.stop()
        await made.executioner.http.aclose()
        await made.bus.close()
