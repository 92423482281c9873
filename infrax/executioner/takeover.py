"""Runs an executioner that died left behind.

Every executioner says it lives twice a second (`executioner_instances`). The runs in flight of one
not heard of for `SILENT_AFTER` seconds are taken by one that lives: one UPDATE moves each of them
to exactly one taker, which re-attaches to their agents as a restarted executioner does to its own
(through the provisioner; a run whose container went too is an infrastructure failure, re-run). An
executioner that was only slow, and comes back, no longer owns those runs: its ends of them are not
recorded (`Executioner._record_finals` writes only its own runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, delete, select, update

from infrax.model import utcnow
from infrax.store import Database, StoreError
from infrax.store.tables import executioner_instances, runs
from infrax.store.upsert import upsert

log = logging.getLogger(__name__)

BEAT_INTERVAL = 0.5  # so that a silent one is found within SILENT_AFTER + 0.5 s
SILENT_AFTER = 3.0  # seconds: an executioner not heard of this long is dead, its runs are taken over
IN_FLIGHT = ("accepted", "running")
FORGOTTEN_AFTER = timedelta(hours=1)  # rows of executioners long gone, with nothing left to take


class Takeover:
    def __init__(
        self,
        db: Database,
        name: str,
        adopt: Callable[[list[Any]], Awaitable[None]],
        log_path: Callable[[str], str],
    ) -> None:
        self.db = db
        self.name = name
        self.adopt = adopt
        self.log_path = log_path
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._beating(), name=f"{self.name}-takeover")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _beating(self) -> None:
        while True:
            try:
                await self.beat()
            except StoreError as error:  # the database is away: the beat after it tries again
                log.info("executioner %s could not say it lives: %s", self.name, error)
            await asyncio.sleep(BEAT_INTERVAL)

    async def beat(self) -> None:
        """Say this executioner lives; take the runs in flight of those that stopped saying so."""
        now = utcnow()
        async with self.db.begin() as conn:
            await upsert(conn, executioner_instances, {"name": self.name, "heartbeat_at": now}, ["name"])
            silent = list(
                (
                    await conn.execute(
                        select(executioner_instances.c.name).where(
                            executioner_instances.c.heartbeat_at < now - timedelta(seconds=SILENT_AFTER)
                        )
                    )
                ).scalars()
            )
            taken: list[Any] = []
            if silent:
                taken = list(
                    (
                        await conn.execute(
                            update(runs)
                            .where(runs.c.executioner.in_(silent), runs.c.state.in_(IN_FLIGHT))
                            .values(executioner=self.name)
                            .returning(*runs.c)
                        )
                    )
                    .mappings()
                    .all()
                )
            if taken:  # their logs go on here
                await conn.execute(
                    update(runs).where(runs.c.run_id == bindparam("b_run_id")).values(log_path=bindparam("b_log_path")),
                    [{"b_run_id": row["run_id"], "b_log_path": self.log_path(row["run_id"])} for row in taken],
                )
            await conn.execute(
                delete(executioner_instances).where(executioner_instances.c.heartbeat_at < now - FORGOTTEN_AFTER)
            )
        if taken:
            log.warning(
                "executioner %s takes over %d runs in flight of %s (silent for %.0f s or more)",
                self.name,
                len(taken),
                ", ".join(sorted(silent)),
                SILENT_AFTER,
            )
            await self.adopt(taken)
