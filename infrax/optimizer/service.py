"""The optimizer service: plans with the runtime history it learns from the bus.

A partition's final `PartitionStatus` (from the scheduler) says which project, task, container
type and files it was and where it ran, and carries what its run measured: `duration`, the
bootstrapper's `fileDurations` and the checkout's `checkoutSeconds`. Without a measured duration,
the partition's own start and finish times give it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from infrax.batcher import Batcher
from infrax.bus import Bus, Message, topics
from infrax.bus.messages import ContainerEvent, PartitionStatus
from infrax.model import ExecutionPlan, PlanRequest, State, pick_container_type, run_id_of
from infrax.optimizer.container_starts import LearnedStart, StartHistory
from infrax.optimizer.history import FileRuntime, RuntimeHistory, Sample
from infrax.optimizer.metrics import OptimizerMetrics
from infrax.optimizer.overheads import LearnedOverhead
from infrax.optimizer.planner import Planner
from infrax.optimizer.workers import PlanningWorker
from infrax.store import Database

log = logging.getLogger(__name__)

LEARNED_STATES = frozenset({State.COMPLETED, State.FAILED})  # a cancelled or lost run says little


OFF_LOOP_FILES = 2000  # requests of fewer files are planned inline: the worker's round trip would cost more


class OptimizerService:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        *,
        files_per_partition: int | None = 10,
        tolerance: float = 0.01,
        default_duration: float = 1.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.history = RuntimeHistory(db)
        self.starts = StartHistory(db)
        self.planner = Planner(files_per_partition, tolerance=tolerance, default_duration=default_duration)
        self.worker = PlanningWorker(self.planner)
        self.metrics = OptimizerMetrics(bus)
        # Learning is not urgent, and one transaction per quarter second instead of one per run
        # took a third of the process's time off `make bench` on PostgreSQL + RabbitMQ.
        self._batcher: Batcher[Sample] = Batcher(self._record, max_batch=200, linger=0.25)
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        self._batcher.start()
        self._subscriptions = [
            await self.bus.subscribe(
                "optimizer-history", topics.PARTITIONS, topics.state_bindings(LEARNED_STATES), self._on_partition_status
            ),
            await self.bus.subscribe(
                "optimizer-container-starts", topics.CONTAINERS, topics.state_bindings(["started"]), self._on_started
            ),
        ]

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()
        self._subscriptions = []
        await self._batcher.stop()
        self.worker.stop()

    @staticmethod
    def _history_keys(request: PlanRequest) -> set[tuple[str, str]]:
        keys = set()
        for task in request.tasks:
            kind = pick_container_type(task.container_tag, request.container_types)
            if kind is not None:
                keys.add((task.name, kind.name))
        return keys

    async def plan(self, request: PlanRequest, *, explain: bool = False) -> ExecutionPlan:
        keys = self._history_keys(request)
        history = await self.history.load(request.project, keys)
        overheads = await self.history.overheads(request.project, keys)
        starts = await self.starts.load()
        # In a thread: a plan that keeps a small suite stable may ask HiGHS for the fewest files
        # to move (optimizer/exact.py), which runs without the GIL for up to a second or two.
        return await asyncio.to_thread(
            self.planner.plan, request, history, explain=explain, overheads=overheads, starts=starts
        )

    async def plan_json(self, request: PlanRequest, *, explain: bool = False) -> bytes:
        """The plan as the REST API answers it; a large request's made in the worker process."""
        started = time.perf_counter()
        if sum(len(t.files) for t in request.tasks) < OFF_LOOP_FILES:
            plan = await self.plan(request, explain=explain)
            self.metrics.planning.labels("inline").observe(time.perf_counter() - started)
            return plan.model_dump_json(by_alias=True).encode()
        keys = self._history_keys(request)
        history = await self.history.load(request.project, keys)
        overheads = await self.history.overheads(request.project, keys)
        made = await self.worker.plan_json(request, history, overheads, await self.starts.load(), explain)
        self.metrics.planning.labels("worker").observe(time.perf_counter() - started)
        return made

    async def overheads(self, project: str, task_name: str) -> list[LearnedOverhead]:
        return await self.history.overhead_rows(project, task_name)

    async def file_history(self, project: str, task_name: str, container_type: str | None = None) -> list[FileRuntime]:
        return await self.history.rows(project, task_name, container_type)

    # -- learning ---------------------------------------------------------------------------

    async def _on_started(self, message: Message) -> None:
        await self.starts.record([ContainerEvent.model_validate(message.body)])

    async def container_starts(self) -> list[LearnedStart]:
        return await self.starts.rows()

    async def _on_partition_status(self, message: Message) -> None:
        if message.body["partition"]["state"] not in LEARNED_STATES:
            return
        status = PartitionStatus.model_validate(message.body)
        part = status.partition
        if part.state not in LEARNED_STATES:
            return
        duration = status.duration
        if duration is None and part.started_at and part.finished_at:
            duration = max(0.0, (part.finished_at - part.started_at).total_seconds())
        sample = Sample(
            project=status.project,
            task_name=status.task_name,
            container_type=part.container_type,
            run_id=run_id_of(part.id, part.run),
            files=part.files,
            index=part.index,
            count=part.count,
            duration=duration,
            file_durations=status.file_durations,
            checkout_seconds=status.checkout_seconds,
        )
        await self._batcher.submit(sample)

    async def _record(self, samples: list[Sample]) -> None:
        await self.history.record(samples)
