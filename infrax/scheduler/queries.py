"""What the scheduler answers about requests, tasks and partitions."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from infrax.ids import prefix_clause
from infrax.model import Task, TaskPartition, TaskRequest
from infrax.pagination import MAX_LIMIT, PageRequest, keyset, split, time_and_id
from infrax.scheduler import records
from infrax.store import Database, aware
from infrax.store.tables import partitions, requests


class NotFound(Exception):
    pass


class Queries:
    db: Database

    async def get_request(self, request_id: str) -> TaskRequest:
        async with self.db.reading() as conn:  # ten thousand partitions, maybe: a long read
            request = await records.load_request(conn, request_id)
        if request is None:
            raise NotFound(f"no task request {request_id}")
        return request

    async def request_project(self, request_id: str) -> str:
        """Its project alone (what a permission check needs), not the request with every partition."""
        async with self.db.begin() as conn:
            project = (await conn.execute(select(requests.c.project).where(requests.c.id == request_id))).scalar()
        if project is None:
            raise NotFound(f"no task request {request_id}")
        return str(project)

    async def job_projects(self, job_id: str) -> set[str]:
        """The projects of the requests already attached to a job (one, or none yet)."""
        async with self.db.begin() as conn:
            found = await conn.execute(select(requests.c.project).where(requests.c.job_id == job_id).distinct())
        return {str(project) for project in found.scalars()}

    async def list_requests(
        self, job_id: str | None = None, state: str | None = None, page: PageRequest | None = None
    ) -> tuple[list[TaskRequest], list[Any] | None]:
        """Newest first, a page at a time; and the key the next page starts after."""
        page = page or PageRequest(MAX_LIMIT, None)
        query = select(requests)
        if job_id:
            query = query.where(requests.c.job_id == job_id)
        if state:
            query = query.where(requests.c.state == state)
        query = keyset(query, page, [requests.c.created_at, requests.c.id], descending=True, parse=time_and_id)
        async with self.db.reading() as conn:
            rows = (await conn.execute(query)).mappings().all()
        items, after = split(rows, page, lambda r: (aware(r["created_at"]), r["id"]))
        return [records.request_from_row(r) for r in items], after

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

    async def list_partitions(
        self,
        request_id: str | None = None,
        state: str | None = None,
        page: PageRequest | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[TaskPartition], list[Any] | None]:
        """In queue order (`seq`), a page at a time; and the key the next page starts after."""
        page = page or PageRequest(MAX_LIMIT, None)
        query = select(partitions)
        if request_id:
            query = query.where(partitions.c.request_id == request_id)
        if id_prefix:
            query = query.where(prefix_clause(partitions.c.id, id_prefix))
        if state:
            query = query.where(partitions.c.state == state)
        async with self.db.reading() as conn:
            rows = (await conn.execute(keyset(query, page, [partitions.c.seq], parse=_ints))).mappings().all()
        items, after = split(rows, page, lambda r: (r["seq"],))
        return [records.partition_from_row(r) for r in items], after

    async def count_partitions(self, request_id: str | None = None) -> dict[str, int]:
        """How many partitions are in each state (of one request, or of all): one aggregate query."""
        query = select(partitions.c.state, func.count()).group_by(partitions.c.state)
        if request_id:
            query = query.where(partitions.c.request_id == request_id)
        async with self.db.reading() as conn:
            return {state: count for state, count in (await conn.execute(query)).all()}


def _ints(key: list[Any]) -> list[int]:
    return [int(v) for v in key]
