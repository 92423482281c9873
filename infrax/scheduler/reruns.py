"""Running a request's failed partitions again: each a new run of the same partition (run + 1), so
its history stays (every run's log, Treeherder's retry of the same chunk), its task and request
back from `failed` to running, and on to their new end."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update

from infrax.bus.messages import BusMessage
from infrax.model import State, TaskRequest, utcnow
from infrax.outbox import Outbox
from infrax.scheduler import records
from infrax.scheduler.definitions import TaskDefinitions
from infrax.scheduler.events import outgoing, partition_status
from infrax.scheduler.queries import NotFound, Queries
from infrax.scheduler.transitions import settle_tasks
from infrax.store.tables import partitions, requests

RERUN_STATES = (State.FAILED, State.EXCEPTION)


class NothingToRerun(Exception):
    """The request has no failed partition (a 409: the caller asked for something that is not there)."""


class Reruns(Queries):
    outbox: Outbox
    _definitions: TaskDefinitions
    _dispatch_wanted: asyncio.Event

    async def rerun_failed(self, request_id: str) -> TaskRequest:
        """Every `failed` or `exception` partition of a finished request queued again as its next run.

        A dependent cancelled because its dependency failed is not run again by this (it never
        ran); a re-run of the whole job (a new request) runs the graph again."""
        now = utcnow()
        async with self.outbox.begin() as (conn, messages):
            request = (
                (await conn.execute(select(requests).where(requests.c.id == request_id).with_for_update()))
                .mappings()
                .first()
            )
            if request is None:
                raise NotFound(f"no task request {request_id}")
            if request["state"] == State.CANCELLED:
                raise NothingToRerun(f"task request {request_id} was cancelled: push it again or re-run the job")
            rows = (
                (
                    await conn.execute(
                        select(partitions)
                        .where(partitions.c.request_id == request_id, partitions.c.state.in_(list(RERUN_STATES)))
                        .order_by(partitions.c.id)
                        .with_for_update()
                    )
                )
                .mappings()
                .all()
            )
            if not rows:
                raise NothingToRerun(f"task request {request_id} has no failed partition to run again")
            events: list[BusMessage] = []
            for row in rows:
                values: dict[str, Any] = {
                    "state": State.QUEUED,
                    "run": row["run"] + 1,
                    "queued_at": now,
                    "message": f"run {row['run'] + 1}: a re-run of run {row['run']} ({row['state']}), as asked",
                    "exit_code": None,
                    "started_at": None,
                    "finished_at": None,
                    "dispatched_at": None,
                    "claimed_by": None,
                    "container_id": None,
                    # All of it again, with re-runs of its failures anew.
                    "failure_reruns": 0,
                    "rerun_tests": None,
                    "avoid_container": None,
                    "intermittent": None,
                }
                await conn.execute(update(partitions).where(partitions.c.id == row["id"]).values(**values))
                task = await self._definitions.get(conn, row["task_id"])
                events.append(
                    partition_status(
                        records.partition_from_row({**row, **values}),
                        row["state"],
                        task.definition.name,
                        {"project": task.project, "revision": task.revision},
                    )
                )
            settled, _ = await settle_tasks(conn, {row["task_id"] for row in rows})
            messages += outgoing(events + settled)
            answer = await records.load_request(conn, request_id)
        self._dispatch_wanted.set()
        assert answer is not None
        return answer
