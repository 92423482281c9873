"""Cancelling requests and jobs: every unfinished partition, task and request, in one transaction."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus.messages import BusMessage
from infrax.http import ServiceError
from infrax.model import FINAL_STATES, State, TaskPartition, TaskRequest, run_id_of, utcnow
from infrax.outbox import Outbox
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler import records
from infrax.scheduler.definitions import TaskDefinitions
from infrax.scheduler.events import outgoing, partition_status, request_status, task_status
from infrax.scheduler.queries import NotFound, Queries
from infrax.scheduler.recovery import IN_FLIGHT
from infrax.store.tables import partitions, requests, tasks

log = logging.getLogger(__name__)

CANCEL_STEP = 250  # partitions' messages written per step of a cancel


class Cancelling(Queries):
    outbox: Outbox
    provisioner: ProvisionerClient
    _definitions: TaskDefinitions

    async def cancel_request(self, request_id: str, reason: str | None = None) -> TaskRequest:
        answer = await self._cancel(
            requests.c.id == request_id,
            partitions.c.request_id == request_id,
            tasks.c.request_id == request_id,
            answer=request_id,
            reason=reason,
        )
        assert answer is not None
        return answer

    async def cancel_job(self, job_id: str, reason: str | None = None) -> list[str]:
        await self._cancel(
            requests.c.job_id == job_id, partitions.c.job_id == job_id, tasks.c.job_id == job_id, reason=reason
        )
        requests_of_job, _ = await self.list_requests(job_id=job_id)
        return [r.id for r in requests_of_job]

    async def _cancel(
        self,
        request_clause: Any,
        partition_clause: Any,
        task_clause: Any,
        answer: str | None = None,
        reason: str | None = None,
    ) -> TaskRequest | None:
        """One set-based statement per table, each returning the rows it changed with the state
        they had (to announce `previous_state`), and one outbox batch: a request of a thousand
        partitions costs what one of ten does, give or take the rows. With `answer`, that request
        as the cancel left it, built in the same transaction from the rows the statements returned
        and those that had already ended: before the relay wakes to publish the thousand messages,
        which would otherwise share the event loop with a second reading."""
        now = utcnow()
        events: list[BusMessage] = []
        async with self.outbox.begin() as (conn, messages):
            found = (await conn.execute(select(requests.c.id).where(request_clause).limit(1))).first()
            if found is None:
                raise NotFound("no such task request or job")
            ended_before = await records.ended_partitions(conn, answer) if answer is not None else []
            parts = await _cancel_rows(
                conn,
                partitions,
                partition_clause,
                {"state": State.CANCELLED, "finished_at": now, "message": reason or "cancelled", "claimed_by": None},
            )
            in_flight = [run_id_of(p["id"], p["run"]) for p in parts if p["previous"] in IN_FLIGHT]
            cancelled: list[TaskPartition] = []
            for n, row in enumerate(parts, 1):
                task = await self._definitions.get(conn, row["task_id"])  # cached: once per task
                part = records.partition_from_row(row)
                cancelled.append(part)
                events.append(
                    partition_status(
                        part,
                        row["previous"],
                        task.definition.name,
                        {"project": task.project, "revision": task.revision},
                    )
                )
                if n % CANCEL_STEP == 0:
                    # Each message is a model checked against its schema: a thousand are 25 ms of
                    # work, given in steps so health checks and streams go on between them.
                    await self.outbox.add(conn, outgoing(events))
                    events = []
                    await asyncio.sleep(0)
            for task_row in await _cancel_rows(conn, tasks, task_clause, {"state": State.CANCELLED, "message": reason}):
                events.append(task_status(task_row, State.CANCELLED, task_row["previous"], reason))
            for request_row in await _cancel_rows(
                conn, requests, request_clause, {"state": State.CANCELLED, "updated_at": now, "message": reason}
            ):
                events.append(
                    request_status(
                        request_row["id"], request_row["job_id"], State.CANCELLED, request_row["previous"], reason
                    )
                )
            messages += outgoing(events)
            answered = (
                await records.load_request(conn, answer, partitions_known=ended_before + cancelled)
                if answer is not None
                else None
            )
        if in_flight:
            try:
                await self.provisioner.cancel(in_flight)
            except ServiceError as error:
                log.warning("could not stop cancelled runs %s: %s", in_flight, error)
        return answered


async def _cancel_rows(conn: AsyncConnection, table: Table, clause: Any, values: dict[str, Any]) -> list[Any]:
    """Every unfinished row `clause` selects, changed by `values` in one set-based statement and
    returned with, as `previous`, the state it had. On PostgreSQL one `UPDATE … FROM (the rows and
    their state) … RETURNING`; SQLite's RETURNING cannot name the FROM table, so there the states
    are read first, in the same transaction of the one writer SQLite has."""
    unfinished = table.c.state.not_in(list(FINAL_STATES))
    if conn.dialect.name == "sqlite":
        previous = dict((await conn.execute(select(table.c.id, table.c.state).where(clause, unfinished))).all())
        if not previous:
            return []
        changed = await conn.execute(update(table).where(clause, unfinished).values(**values).returning(*table.c))
        return [{**row, "previous": previous[row["id"]]} for row in changed.mappings().all()]
    before = select(table.c.id, table.c.state.label("previous")).where(clause, unfinished).subquery("before")
    changed = await conn.execute(
        update(table).where(table.c.id == before.c.id).values(**values).returning(*table.c, before.c.previous)
    )
    return list(changed.mappings().all())
