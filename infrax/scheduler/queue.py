"""Where a queued partition stands: its position among the partitions that compete with it (the
claimable ones of its container type, in claim order) and when it is expected to start and end.

The expectation replays the queue on the type's containers: each running partition frees its
container when its estimate (plus the type's overhead) has passed, and each partition ahead takes
the first container free for its own estimate plus overhead. The overhead is how long the type's
latest runs held their containers beyond their estimates (start-up, checkout, reporting, the
hand-over to the next run): the median of the last RECENT_RUNS, so a steady queue calibrates
itself. Per-project limits are not replayed: a limited project's partition may start later than said.
"""

from __future__ import annotations

import contextlib
import heapq
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.http import ServiceError
from infrax.model import ContainerType, State, TaskPartition, utcnow
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler.fair_share import DEFAULT_SHARE, ProjectShare, claimable
from infrax.store import Database, aware
from infrax.store.tables import partitions

REPLAYED = 5000  # partitions ahead replayed one by one; beyond, their mean
RECENT_RUNS = 100  # of a type's ended runs, the ones its overhead is learned from
IN_FLIGHT = (State.DISPATCHED, State.RUNNING)
OVERHEAD_TTL = 1.0  # seconds a type's learned overhead is reused (a status page polled often asks once)
HANDOVER = 2.0  # seconds between a run's end and its container's next dispatch that still count as busy


@dataclass(frozen=True)
class QueuePlace:
    position: int  # 0: the next to start
    expected_start: datetime
    expected_end: datetime


class QueueReading:
    db: Database
    _container_types: list[ContainerType]
    _overheads: dict[str, tuple[float, float]]  # type -> (overhead, when learned)
    projects: Mapping[str, ProjectShare]
    provisioner: ProvisionerClient

    async def with_queue_places(self, parts: Sequence[TaskPartition]) -> None:
        """Each queued partition given its position and expected start and end (in place)."""
        queued = [p for p in parts if p.state == State.QUEUED]
        if not queued:
            return
        if not self._container_types:  # a scheduler that has planned nothing yet: their capacities
            with contextlib.suppress(ServiceError):
                self._container_types = await self.provisioner.container_types()
        async with self.db.reading() as conn:
            by_type: dict[str, list[TaskPartition]] = {}
            for part in queued:
                by_type.setdefault(part.container_type, []).append(part)
            for container_type, waiting in by_type.items():
                places = await self._places(conn, container_type, {p.request_id for p in waiting})
                for part in waiting:
                    place = places.get(part.id)
                    if place is not None:
                        part.queue_position = place.position
                        part.expected_start, part.expected_end = place.expected_start, place.expected_end

    async def _places(self, conn: AsyncConnection, container_type: str, request_ids: set[str]) -> dict[str, QueuePlace]:
        """The places of the queued partitions of these requests (by request: a request of ten
        thousand partitions is one indexed condition, not ten thousand ids)."""
        keys = (
            await conn.execute(
                select(partitions.c.id, partitions.c.fair_key, partitions.c.seq, partitions.c.expected_duration).where(
                    partitions.c.request_id.in_(request_ids), *claimable(container_type)
                )
            )
        ).all()
        if not keys:
            return {}
        last = max((k.fair_key, k.seq) for k in keys)
        ahead = (
            await conn.execute(
                select(partitions.c.id, partitions.c.expected_duration)
                .where(*claimable(container_type), _before(*last) | _at(*last))
                .order_by(partitions.c.fair_key, partitions.c.seq)
                .limit(REPLAYED)
            )
        ).all()
        overhead = await self._overhead(conn, container_type)
        slots = await self._free_at(conn, container_type, overhead)
        now = utcnow()
        places: dict[str, QueuePlace] = {}
        mean = max(0.0, statistics.fmean([(d or 0.0) for _, d in ahead] or [0.0]) + overhead)
        for position, (part_id, duration) in enumerate(ahead):
            free = heapq.heappop(slots)
            took = max(0.0, (duration or 0.0) + overhead)
            heapq.heappush(slots, free + took)
            places[part_id] = QueuePlace(position, now + timedelta(seconds=free), now + timedelta(seconds=free + took))
        beyond = sorted((k for k in keys if k.id not in places), key=lambda k: (k.fair_key, k.seq))
        if beyond:
            # Far down a long queue: the first and last counted, those between placed evenly (as a
            # fair queue interleaves them), and the rest of the way at the replay's pace.
            first = await self._count_before(conn, container_type, beyond[0].fair_key, beyond[0].seq)
            span = (
                await self._count_before(conn, container_type, beyond[-1].fair_key, beyond[-1].seq) - first
                if len(beyond) > 1
                else 0
            )
            replayed_until = min(slots)
            for rank, k in enumerate(beyond):
                position = first + (round(rank * span / (len(beyond) - 1)) if len(beyond) > 1 else 0)
                start = replayed_until + (position - len(ahead)) * mean / len(slots)
                took = max(0.0, (k.expected_duration or 0.0) + overhead)
                places[k.id] = QueuePlace(
                    position, now + timedelta(seconds=start), now + timedelta(seconds=start + took)
                )
        return places

    async def _count_before(self, conn: AsyncConnection, container_type: str, fair_key: float, seq: int) -> int:
        found = await conn.execute(select(func.count()).where(*claimable(container_type), _before(fair_key, seq)))
        return int(found.scalar_one())

    async def _free_at(self, conn: AsyncConnection, container_type: str, overhead: float) -> list[float]:
        """Seconds from now until each of the type's containers is free, as a heap."""
        capacity = next((t.max_concurrent for t in self._container_types if t.name == container_type), 1)
        running = (
            await conn.execute(
                select(partitions.c.dispatched_at, partitions.c.expected_duration).where(
                    partitions.c.container_type == container_type, partitions.c.state.in_(IN_FLIGHT)
                )
            )
        ).all()
        now = utcnow()
        left = [
            max(0.0, (duration or 0.0) + overhead - ((now - aware(at)).total_seconds() if at else 0.0))
            for at, duration in running
        ]
        slots = sorted(left)[:capacity] + [0.0] * max(0, capacity - len(left))
        heapq.heapify(slots)
        return slots

    async def _overhead(self, conn: AsyncConnection, container_type: str) -> float:
        """What each of the type's latest runs held its container for beyond its estimate (median):
        from its dispatch to the next dispatch to the same container while the queue kept it busy
        (start-up, checkout, reporting and the hand-over), else to its end. Negative when the
        estimates are long."""
        known = self._overheads.get(container_type)
        if known is not None and time.monotonic() - known[1] < OVERHEAD_TTL:
            return known[0]
        rows = (
            await conn.execute(
                select(
                    partitions.c.container_id,
                    partitions.c.dispatched_at,
                    partitions.c.finished_at,
                    partitions.c.expected_duration,
                )
                .where(
                    partitions.c.state.in_([State.COMPLETED, State.FAILED]),  # the ix_partitions_state_seq index
                    partitions.c.container_type == container_type,
                    partitions.c.dispatched_at.is_not(None),
                    partitions.c.finished_at.is_not(None),
                )
                .order_by(partitions.c.seq.desc())
                .limit(RECENT_RUNS)
            )
        ).all()
        by_container: dict[str, list[Any]] = {}
        for row in rows:
            by_container.setdefault(row.container_id or "", []).append(row)
        held: list[float] = []
        for runs in by_container.values():
            runs.sort(key=lambda r: aware(r.dispatched_at))
            for run, following in zip(runs, [*runs[1:], None], strict=True):
                dispatched, finished = aware(run.dispatched_at), aware(run.finished_at)
                until = finished
                if following is not None and (aware(following.dispatched_at) - finished).total_seconds() < HANDOVER:
                    until = aware(following.dispatched_at)
                held.append((until - dispatched).total_seconds() - (run.expected_duration or 0.0))
        overhead = statistics.median(held) if held else 0.0
        self._overheads[container_type] = (overhead, time.monotonic())
        return overhead

    async def queue_summary(self) -> list[dict[str, Any]]:
        """Per container type: its capacity, what is queued and running, by project."""
        async with self.db.reading() as conn:
            rows = (
                await conn.execute(
                    select(partitions.c.container_type, partitions.c.project, partitions.c.state, func.count())
                    .where(partitions.c.state.in_([State.QUEUED, *IN_FLIGHT]))
                    .group_by(partitions.c.container_type, partitions.c.project, partitions.c.state)
                )
            ).all()
            oldest = dict(
                (
                    await conn.execute(
                        select(partitions.c.container_type, func.min(partitions.c.queued_at))
                        .where(partitions.c.state == State.QUEUED)
                        .group_by(partitions.c.container_type)
                    )
                ).all()
            )
        now = utcnow()
        types: dict[str, dict[str, Any]] = {}
        for container_type, project, state, count in rows:
            entry = types.setdefault(container_type, {"containerType": container_type, "projects": {}})
            counts = entry["projects"].setdefault(project or "", {"queued": 0, "running": 0})
            counts["queued" if state == State.QUEUED else "running"] += count
        summary = []
        for name in sorted(types):
            entry = types[name]
            running = sum(p["running"] for p in entry["projects"].values())
            capacity = next((t.max_concurrent for t in self._container_types if t.name == name), None)
            at = oldest.get(name)
            summary.append(
                {
                    "containerType": name,
                    "capacity": capacity,
                    "queued": sum(p["queued"] for p in entry["projects"].values()),
                    "running": running,
                    "oldestWaitSeconds": round((now - aware(at)).total_seconds(), 3) if at else None,
                    "projects": [
                        {
                            "project": project,
                            **counts,
                            "weight": self.projects.get(project, DEFAULT_SHARE).weight,
                            "share": round(counts["running"] / running, 3) if running else 0.0,
                        }
                        for project, counts in sorted(entry["projects"].items())
                    ],
                }
            )
        return summary


def _before(fair_key: float, seq: int) -> Any:
    return or_(partitions.c.fair_key < fair_key, and_(partitions.c.fair_key == fair_key, partitions.c.seq < seq))


def _at(fair_key: float, seq: int) -> Any:
    return and_(partitions.c.fair_key == fair_key, partitions.c.seq == seq)
