"""Task definitions by task id, with their request's project, revision and trust: read once per
task, not once per run (a thousand partitions share one)."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.model import TaskDefinition
from infrax.store.tables import requests, tasks

DEFINITIONS_KEPT = 10_000


class Known(NamedTuple):
    definition: TaskDefinition
    project: str
    revision: str | None
    trusted: bool


class TaskDefinitions:
    """A bounded cache (least recently used out): memory does not grow with the number of tasks."""

    def __init__(self, kept: int = DEFINITIONS_KEPT) -> None:
        self.kept = kept
        self._known: OrderedDict[str, Known] = OrderedDict()

    async def get(self, conn: AsyncConnection, task_id: str) -> Known:
        known = self._known.get(task_id)
        if known is not None:
            self._known.move_to_end(task_id)
            return known
        row = (
            await conn.execute(
                select(tasks.c.definition, requests.c.project, requests.c.revision, requests.c.trusted)
                .join(requests, requests.c.id == tasks.c.request_id)
                .where(tasks.c.id == task_id)
            )
        ).one()
        known = Known(TaskDefinition.model_validate(row.definition), row.project, row.revision, bool(row.trusted))
        self._known[task_id] = known
        if len(self._known) > self.kept:
            self._known.popitem(last=False)
        return known
