"""Large plans made in a process of their own.

Planning a 10,000-file request is 50–70 ms of pure Python, and so is its plan's encoding; in the
event loop's process (even in a thread: the GIL) that much CPU stalls health checks, agent streams
and heartbeats of every component `infrax up` holds. A worker process does the planning and
hands back the plan as the JSON the REST API answers with, so the loop neither builds nor
serialises the ten thousand partitions. One worker: plans are made one at a time anyway (a
scheduler plans its requests in turn), and it keeps the process count, and memory, fixed. It is
started by the first large request (spawning takes a second of CPU, which a test suite starting
a hundred stacks should not pay for each).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from infrax.model import PlanRequest
from infrax.optimizer.container_starts import ContainerStarts
from infrax.optimizer.history import History
from infrax.optimizer.overheads import Overheads
from infrax.optimizer.planner import Planner

log = logging.getLogger(__name__)


def _plan_json(
    planner: Planner, request: bytes, history: History, overheads: Overheads, starts: ContainerStarts, explain: bool
) -> bytes:
    # The request goes as its JSON, not pickled: a worker started after an upgrade of the files
    # reads it by the wire format, which is versioned, not by the class layout of another release.
    decoded = PlanRequest.model_validate_json(request)
    plan = planner.plan(decoded, history, explain=explain, overheads=overheads, starts=starts)
    return plan.model_dump_json(by_alias=True).encode()


class PlanningWorker:
    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self._pool: ProcessPoolExecutor | None = None
        self._failures = 0  # deaths in a row

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # spawn: a fork of a process with an event loop and threads may inherit held locks.
            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    @property
    def pid(self) -> int | None:
        """The worker's process id, once it runs (None before, or planning in a thread)."""
        processes = getattr(self._pool, "_processes", None) or {}
        return next(iter(processes), None)

    async def plan_json(
        self, request: PlanRequest, history: History, overheads: Overheads, starts: ContainerStarts, explain: bool
    ) -> bytes:
        loop = asyncio.get_running_loop()
        encoded = request.model_dump_json(by_alias=True).encode()
        while self._failures < 2:
            try:
                plan = await loop.run_in_executor(
                    self._executor(), _plan_json, self.planner, encoded, history, overheads, starts, explain
                )
            except BrokenProcessPool:
                # The worker died (killed, out of memory): a new one plans it again. One that dies
                # twice in a row cannot start here (a `__main__` without its guard, say): a thread.
                self.stop()
                self._failures += 1
                log.warning("the planning worker died%s", "; planning in a thread from now on" * (self._failures >= 2))
                continue
            self._failures = 0
            return plan
        return await asyncio.to_thread(_plan_json, self.planner, encoded, history, overheads, starts, explain)

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
