"""Cancelling requests and jobs: every unfinished partition, task and request, in one transaction."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, update

from infrax.bus.messages import BusMessage
from infrax.http import ServiceError
from infrax.model import FINAL_STATES, State, TaskRequest, is_final, run_id_of, utcnow
from infrax.outbox import Outbox
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler import records
from infrax.scheduler.definitions import TaskDefinitions
from infrax.scheduler.events import outgoing, partition_status, request_status, task_status
from infrax.scheduler.queries import NotFound, Queries
from infrax.scheduler.recovery import IN_FLIGHT
from infrax.store.tables import partitions, requests, tasks

log = logging.getLogger(__name__)


class Cancelling(Queries):
    outbox: Outbox
    provisioner: ProvisionerClient
    _definitions: TaskDefinitions

    async def cancel_request(self, request_id: str) -> TaskRequest:
        await self._cancel(
            requests.c.id == request_id, partitions.c.request_id == request_id, tasks.c.request_id == request_id
        )
        return await self.get_request(request_id)

    async def cancel_job(self, job_id: str) -> list[str]:
        await self._cancel(requests.c.job_id == job_id, partitions.c.job_id == job_id, tasks.c.job_id == job_id)
        return [r.id for r in await self.list_requests(job_id=job_id)]

    async def _cancel(self, request_clause: Any, partition_clause: Any, task_clause: Any) -> None:
        now = utcnow()
        events: list[BusMessage] = []
        async with self.outbox.begin() as (conn, messages):
            found = (await conn.execute(select(requests).where(request_clause))).mappings().all()
            if not found:
                raise NotFound("no such task request or job")
            parts = (
                (
                    await conn.execute(
                        select(partitions).where(partition_clause, partitions.c.state.not_in(list(FINAL_STATES)))
                    )
                )
                .mappings()
                .all()
            )
            in_flight = [run_id_of(p["id"], p["run"]) for p in parts if p["state"] in IN_FLIGHT]
            for part in parts:
                row = dict(part) | {"state": State.CANCELLED, "finished_at": now, "message": "cancelled"}
                await conn.execute(
                    update(partitions)
                    .where(partitions.c.id == part["id"])
                    .values(state=State.CANCELLED, finished_at=now, message="cancelled", claimed_by=None)
                )
                task = await self._definitions.get(conn, part["task_id"])
                events.append(
                    partition_status(
                        records.partition_from_row(row),
                        part["state"],
                        task.definition.name,
                        {"project": task.project, "revision": task.revision},
                    )
                )
            for task_row in (
                (await conn.execute(select(tasks).where(task_clause, tasks.c.state.not_in(list(FINAL_STATES)))))
                .mappings()
                .all()
            ):
                await conn.execute(update(tasks).where(tasks.c.id == task_row["id"]).values(state=State.CANCELLED))
                events.append(task_status(task_row, State.CANCELLED, task_row["state"]))
            for request_row in found:
                if not is_final(request_row["state"]):
                    await conn.execute(
                        update(requests)
                        .where(requests.c.id == request_row["id"])
                        .values(state=State.CANCELLED, updated_at=now)
                    )
                    events.append(
                        request_status(request_row["id"], request_row["job_id"], State.CANCELLED, request_row["state"])
                    )
            messages += outgoing(events)
        if in_flight:
            try:
                await self.provisioner.cancel(in_flight)
            except ServiceError as error:
                log.warning("could not stop cancelled runs %s: %s", in_flight, error)
