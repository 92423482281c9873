"""The optimizer service: plans with the runtime history it learns from the bus.

Learning needs two messages of one run. A partition's final `PartitionStatus` (from the
scheduler) says which project, task, container type and files it was, and where it ran; the
run's final `RunStatus` (from the executioner) carries the measured `duration` and the
bootstrapper's `fileDurations`. The run status is published first, so it is kept in memory by
run id until the partition status arrives; should it be missing (e.g. this process restarted in
between), the partition's own start and finish times give the duration.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from typing import Any

from infrax.batcher import Batcher
from infrax.bus import Bus, Message, topics
from infrax.bus.messages import PartitionStatus, RunStatus
from infrax.model import ExecutionPlan, PlanRequest, State, run_id_of
from infrax.optimizer.history import FileRuntime, RuntimeHistory, Sample
from infrax.optimizer.planner import Planner, pick_container_type
from infrax.store import Database

log = logging.getLogger(__name__)

LEARNED_STATES = frozenset({State.COMPLETED, State.FAILED})  # a cancelled or lost run says little
MEASUREMENTS_KEPT = 10_000  # runs whose partition status has not arrived yet
MEASUREMENT_WAIT = 0.5  # seconds a partition status waits for its run's measurements


class OptimizerService:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        *,
        files_per_partition: int = 10,
        tolerance: float = 0.01,
        default_duration: float = 1.0,
    ) -> None:
        self.db = db
        self.bus = bus
        self.history = RuntimeHistory(db)
        self.planner = Planner(files_per_partition, tolerance=tolerance, default_duration=default_duration)
        self._measured: OrderedDict[str, tuple[float | None, dict[str, float] | None]] = OrderedDict()
        self._batcher: Batcher[Sample] = Batcher(self._record, max_batch=200)
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        self._batcher.start()
        self._subscriptions = [
            await self.bus.subscribe("optimizer", topics.RUNS, ["#"], self._on_run_status),
            await self.bus.subscribe("optimizer-history", topics.PARTITIONS, ["#"], self._on_partition_status),
        ]

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()
        self._subscriptions = []
        await self._batcher.stop()

    async def plan(self, request: PlanRequest, *, explain: bool = False) -> ExecutionPlan:
        keys = set()
        for task in request.tasks:
            kind = pick_container_type(task.container_tag, request.container_types)
            if kind is not None:
                keys.add((task.name, kind.name))
        history = await self.history.load(request.project, keys)
        return self.planner.plan(request, history, explain=explain)

    async def file_history(self, project: str, task_name: str, container_type: str | None = None) -> list[FileRuntime]:
        return await self.history.rows(project, task_name, container_type)

    # -- learning ---------------------------------------------------------------------------

    async def _on_run_status(self, message: Message) -> None:
        if message.body["state"] not in LEARNED_STATES:  # the bus checked the shape: skip cheaply
            return
        status = RunStatus.model_validate(message.body)
        if status.state in LEARNED_STATES:
            self._measured[status.run_id] = (status.duration, status.file_durations)
            self._measured.move_to_end(status.run_id)
            while len(self._measured) > MEASUREMENTS_KEPT:
                self._measured.popitem(last=False)

    async def _on_partition_status(self, message: Message) -> None:
        if message.body["partition"]["state"] not in LEARNED_STATES:
            return
        status = PartitionStatus.model_validate(message.body)
        part = status.partition
        if part.state not in LEARNED_STATES:
            return
        run_id = run_id_of(part.id, part.run)
        measured = await self._measurements(run_id)
        if measured is None:
            duration = None
            if part.started_at and part.finished_at:
                duration = max(0.0, (part.finished_at - part.started_at).total_seconds())
            measured = (duration, None)
        sample = Sample(
            project=status.project, task_name=status.task_name, container_type=part.container_type, run_id=run_id,
            files=part.files, index=part.index, count=part.count, duration=measured[0], file_durations=measured[1],
        )
        await self._batcher.submit(sample)
        self._measured.pop(run_id, None)

    async def _record(self, samples: list[Sample]) -> None:
        await self.history.record(samples)

    async def _measurements(self, run_id: str) -> tuple[float | None, dict[str, float] | None] | None:
        waited = 0.0
        while run_id not in self._measured and waited < MEASUREMENT_WAIT:
            await asyncio.sleep(0.05)
            waited += 0.05
        found = self._measured.get(run_id)
        if found is None:
            log.info("run %s: no run status seen; its duration comes from the partition's times", run_id)
        return found
