"""What the scheduler answers about requests, tasks and partitions."""

from __future__ import annotations

from sqlalchemy import select

from infrax.model import Task, TaskPartition, TaskRequest
from infrax.scheduler import records
from infrax.store import Database
from infrax.store.tables import partitions, requests


class NotFound(Exception):
    pass


class Queries:
    db: Database

    async def get_request(self, request_id: str) -> TaskRequest:
        async with self.db.begin() as conn:
            request = await records.load_request(conn, request_id)
        if request is None:
            raise NotFound(f"no task request {request_id}")
        return request

    async def list_requests(self, job_id: str | None = None, state: str | None = None) -> list[TaskRequest]:
        query = select(requests).order_by(requests.c.created_at.desc()).limit(500)
        if job_id:
            query = query.where(requests.c.job_id == job_id)
        if state:
            query = query.where(requests.c.state == state)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [records.request_from_row(r) for r in rows]

    async def get_task(self, task_id: str) -> Task:
        async with self.db.begin() as conn:
            task = await records.load_task(conn, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def get_partition(self, partition_id: str) -> TaskPartition:
        async with self.db.begin() as conn:
            partition = await records.load_partition(conn, partition_id)
        if partition is None:
            raise NotFound(f"no partition {partition_id}")
        return partition

    async def list_partitions(self, request_id: str | None = None, state: str | None = None) -> list[TaskPartition]:
        query = select(partitions).order_by(partitions.c.seq)
        if request_id:
            query = query.where(partitions.c.request_id == request_id)
        if state:
            query = query.where(partitions.c.state == state)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [records.partition_from_row(r) for r in rows]
