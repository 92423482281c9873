"""How long a container of each type takes to start: learned from the provisioner's "started" events
(each says how long that start took), used by the planner as the type's own per-partition overhead
in place of the `overhead` set by hand in its configuration, once one start was measured.

The estimate is the mean of the last RECENT starts: a start is not a run on a loaded machine, and
a cold image or a slow provider is exactly what it should follow.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

from pydantic import Field
from sqlalchemy import select

from infrax.bus.messages import ContainerEvent
from infrax.model import WireModel, utcnow
from infrax.store import Database, aware
from infrax.store.tables import container_starts
from infrax.store.upsert import insert_missing, upsert

RECENT = 10


class ContainerStart(NamedTuple):
    seconds: float
    samples: int


ContainerStarts = Mapping[str, ContainerStart]


class LearnedStart(WireModel):
    """A container type's learned start, as `GET /api/v1/container-starts` shows it."""

    container_type: str
    seconds: float = Field(description="the mean of its last starts")
    samples: int = Field(description="starts measured in all")
    updated_at: datetime


class StartHistory:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, events: list[ContainerEvent]) -> None:
        """Fold "started" events into their types' rows; a redelivered event changes nothing."""
        measured = [e for e in events if e.event == "started" and e.start_seconds is not None and e.container_id]
        if not measured:
            return
        now = utcnow()
        async with self.db.begin() as conn:
            for type_name in sorted({e.container_type for e in measured}):
                # Two events of a type folded at once (two consumers, two optimizers) take turns on its row.
                empty = {"container_type": type_name, "seconds": 0.0, "samples": 0, "recent": [], "updated_at": now}
                await insert_missing(conn, container_starts, empty, ("container_type",))
                stored = (
                    (
                        await conn.execute(
                            select(container_starts)
                            .where(container_starts.c.container_type == type_name)
                            .with_for_update()
                        )
                    )
                    .mappings()
                    .one()
                )
                recent = [tuple(r) for r in stored["recent"]]
                samples = stored["samples"]
                seen = {container for container, _ in recent}
                for event in measured:
                    if event.container_type == type_name and event.container_id not in seen:
                        recent.append((event.container_id, float(event.start_seconds or 0.0)))
                        seen.add(event.container_id)
                        samples += 1
                recent = recent[-RECENT:]
                row = {
                    "container_type": type_name,
                    "seconds": round(statistics.fmean(s for _, s in recent), 6),
                    "samples": samples,
                    "recent": [list(r) for r in recent],
                    "updated_at": now,
                }
                await upsert(conn, container_starts, row, ("container_type",))

    async def load(self) -> dict[str, ContainerStart]:
        async with self.db.begin() as conn:
            rows = (await conn.execute(select(container_starts))).mappings().all()
        return {r["container_type"]: ContainerStart(r["seconds"], r["samples"]) for r in rows}

    async def rows(self) -> list[LearnedStart]:
        async with self.db.begin() as conn:
            rows = (
                (await conn.execute(select(container_starts).order_by(container_starts.c.container_type)))
                .mappings()
                .all()
            )
        return [
            LearnedStart(
                container_type=r["container_type"],
                seconds=r["seconds"],
                samples=r["samples"],
                updated_at=aware(r["updated_at"]),
            )
            for r in rows
        ]
