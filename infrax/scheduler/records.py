"""Reading the scheduler's tables into wire objects."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import RowMapping
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.model import FINAL_STATES, Task, TaskDefinition, TaskPartition, TaskRequest
from infrax.store import aware
from infrax.store.tables import partitions, requests, tasks


def partition_from_row(row: RowMapping | dict[str, Any]) -> TaskPartition:
    return TaskPartition(
        id=row["id"],
        task_id=row["task_id"],
        request_id=row["request_id"],
        job_id=row["job_id"],
        index=row["idx"],
        count=row["count"],
        files=row["files"],
        container_type=row["container_type"],
        state=row["state"],
        run=row["run"],
        priority=row["priority"],
        expected_duration=row.get("expected_duration"),
        exit_code=row.get("exit_code"),
        message=row.get("message"),
        log_url=row.get("log_url"),
        container_id=row.get("container_id"),
        queued_at=aware(row.get("queued_at")),
        started_at=aware(row.get("started_at")),
        finished_at=aware(row.get("finished_at")),
        failure_reruns=row.get("failure_reruns") or 0,
        intermittent=row.get("intermittent"),
    )


def task_from_row(row: RowMapping, parts: list[TaskPartition] | None = None) -> Task:
    return Task(
        id=row["id"],
        request_id=row["request_id"],
        job_id=row["job_id"],
        name=row["name"],
        state=row["state"],
        message=row["message"],
        definition=TaskDefinition.model_validate(row["definition"]),
        partitions=parts or [],
        explanation=row.get("explanation"),
    )


def request_from_row(row: RowMapping, task_list: list[Task] | None = None) -> TaskRequest:
    return TaskRequest(
        id=row["id"],
        job_id=row["job_id"],
        project=row["project"],
        revision=row["revision"],
        state=row["state"],
        message=row["message"],
        created_at=aware(row["created_at"]),
        tasks=task_list or [],
    )


async def load_request(
    conn: AsyncConnection, request_id: str, partitions_known: list[TaskPartition] | None = None
) -> TaskRequest | None:
    """A request with its tasks and partitions; with `partitions_known`, every one of its
    partitions, as the caller has them (a cancel: those it ended and those already ended), and
    none read again."""
    row = (await conn.execute(select(requests).where(requests.c.id == request_id))).mappings().first()
    if row is None:
        return None
    task_rows = (
        (await conn.execute(select(tasks).where(tasks.c.request_id == request_id).order_by(tasks.c.position)))
        .mappings()
        .all()
    )
    by_task: dict[str, list[TaskPartition]] = defaultdict(list)
    if partitions_known is not None:
        for part in sorted(partitions_known, key=lambda p: p.index):
            by_task[part.task_id].append(part)
    else:
        part_rows = (
            (
                await conn.execute(
                    select(partitions).where(partitions.c.request_id == request_id).order_by(partitions.c.idx)
                )
            )
            .mappings()
            .all()
        )
        for n, part_row in enumerate(part_rows, 1):
            by_task[part_row["task_id"]].append(partition_from_row(part_row))
            if n % 500 == 0:
                await asyncio.sleep(0)  # a model per partition: the event loop serves others between steps
    return request_from_row(row, [task_from_row(t, by_task[t["id"]]) for t in task_rows])


async def ended_partitions(conn: AsyncConnection, request_id: str) -> list[TaskPartition]:
    """A request's partitions already in a final state."""
    rows = await conn.execute(
        select(partitions).where(partitions.c.request_id == request_id, partitions.c.state.in_(list(FINAL_STATES)))
    )
    return [partition_from_row(r) for r in rows.mappings().all()]


async def load_task(conn: AsyncConnection, task_id: str) -> Task | None:
    row = (await conn.execute(select(tasks).where(tasks.c.id == task_id))).mappings().first()
    if row is None:
        return None
    part_rows = (
        (await conn.execute(select(partitions).where(partitions.c.task_id == task_id).order_by(partitions.c.idx)))
        .mappings()
        .all()
    )
    return task_from_row(row, [partition_from_row(p) for p in part_rows])


async def load_partition(conn: AsyncConnection, partition_id: str) -> TaskPartition | None:
    row = (await conn.execute(select(partitions).where(partitions.c.id == partition_id))).mappings().first()
    return None if row is None else partition_from_row(row)
