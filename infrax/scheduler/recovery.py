"""Work a dead scheduler or a lost run left behind: claims of schedulers that stopped beating,
and runs in flight that the executioner never heard of."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta

from sqlalchemy import ColumnElement, delete, select, update

from infrax.bus.messages import RunStatus
from infrax.executioner.client import ExecutionerClient, ExecutionerPool
from infrax.model import State, is_final, run_id_of, utcnow
from infrax.scheduler.transitions import lost
from infrax.store import Database, aware
from infrax.store.tables import partitions, scheduler_instances
from infrax.store.upsert import upsert

log = logging.getLogger(__name__)

IN_FLIGHT = (State.DISPATCHED, State.RUNNING)
HEARTBEAT_INTERVAL = 1.0
# A scheduler silent this long is dead: its claims (held only while offering, milliseconds) go back.
HEARTBEAT_TIMEOUT = 3.0
FORGOTTEN_AFTER = timedelta(hours=1)  # instance rows of schedulers long gone are removed


class Recovery:
    def __init__(
        self,
        db: Database,
        instance: str,
        executioner: ExecutionerClient | ExecutionerPool,
        apply: Callable[[RunStatus], Awaitable[None]],
        wake_dispatch: Callable[[], None],
    ) -> None:
        self.db = db
        self.instance = instance
        self.executioner = executioner
        self.apply = apply
        self.wake_dispatch = wake_dispatch

    async def beat(self) -> None:
        """Say this scheduler lives, and release the claims of those that stopped saying so."""
        now = utcnow()
        async with self.db.begin() as conn:
            await upsert(conn, scheduler_instances, {"id": self.instance, "heartbeat_at": now}, ["id"])
            await conn.execute(
                delete(scheduler_instances).where(scheduler_instances.c.heartbeat_at < now - FORGOTTEN_AFTER)
            )
        await self.release_stale_claims()

    async def release_stale_claims(self, everything: bool = False) -> None:
        """Claims of a scheduler that died between claiming and offering go back to the queue.

        Re-offering such a partition is safe: the offer carries the same run id, and a run the
        provisioner already took is answered "already accepted".
        """
        stale: ColumnElement[bool] = partitions.c.claimed_by.is_not(None)
        if not everything:
            alive = select(scheduler_instances.c.id).where(
                scheduler_instances.c.heartbeat_at >= utcnow() - timedelta(seconds=HEARTBEAT_TIMEOUT)
            )
            stale = (
                stale
                & partitions.c.claimed_by.not_in(alive.scalar_subquery())
                & (partitions.c.claimed_by != self.instance)
            )
        async with self.db.begin() as conn:
            released = (await conn.execute(update(partitions).where(stale).values(claimed_by=None))).rowcount
        if released:
            log.warning("released %d claims of schedulers that stopped", released)
            self.wake_dispatch()

    async def check_in_flight(self, grace: float) -> None:
        """Ask the executioner about runs we have heard nothing of; a run it never got is lost."""
        async with self.db.begin() as conn:
            rows = (await conn.execute(select(partitions).where(partitions.c.state.in_(IN_FLIGHT)))).mappings().all()
        now = utcnow()
        for row in rows:
            since = aware(row["started_at"] or row["dispatched_at"] or row["queued_at"])
            if grace and since and (now - since).total_seconds() < grace:
                continue
            run_id = run_id_of(row["id"], row["run"])
            run = await self.executioner.get_run(run_id)
            if run is None:
                status = lost(row, "the run was lost before it reached the executioner")
            elif is_final(run.state):
                status = run
            else:
                continue
            await self.apply(status)
