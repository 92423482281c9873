"""Fair share between projects: each queued partition gets a key at intake, and the claim takes
the lowest keys of a container type (one indexed statement, as before).

The keys are start-time fair queuing's virtual start tags (Goyal, Vin and Cheng, 1996), counted
in starts: a project of weight w that queues n partitions of a type takes the next n keys of its
own timeline, 1/w apart, from whichever is later of the type's virtual time and the end of its
own earlier work. The type's virtual time is (just below) the lowest key still queued, so a project that was
idle starts where the queue stands (no credit for idleness, no wait behind another's backlog),
and while several are backlogged their starts interleave in proportion to their weights.

A priority lane shifts the keys by PRIORITY_STEP a point: a positive priority goes ahead of that
many starts of every project's queue (and its own backlog), a negative one behind. The shift is
bounded, so the queue's advance ages every lane: nothing waits for ever.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, insert, literal_column, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.model import State
from infrax.store.tables import fair_clocks, fair_shares, partitions

PRIORITY_STEP = 1.0  # virtual starts a priority point moves a partition by
JOIN_AHEAD = 1e-6


@dataclass(frozen=True)
class ProjectShare:
    """What the operator gives a project (`projects:` in the configuration)."""

    weight: float = 1.0
    # container type (or "*" for each type) -> containers of it the project's runs may hold at once
    max_containers: Mapping[str, int] = field(default_factory=dict)
    max_priority: int | None = None  # a task's priority above this counts as this

    def limit(self, container_type: str) -> int | None:
        return self.max_containers.get(container_type, self.max_containers.get("*"))


DEFAULT_SHARE = ProjectShare()


@dataclass(frozen=True)
class Queued:
    """One partition about to be queued: what its key depends on."""

    container_type: str
    priority: int
    order: int  # its place in its request's dispatch order


async def assign_keys(
    conn: AsyncConnection, project: str, share: ProjectShare, queued: list[Queued], *, dependent: bool
) -> list[float]:
    """The fair keys of a request's partitions (in the order given), its project's timeline
    advanced past them. A dependent (the tests of a finished build) starts at the type's virtual
    time rather than behind its own project's later work: it was asked for with its request."""
    keys = [0.0] * len(queued)
    by_type: dict[str, list[int]] = defaultdict(list)
    for i, part in enumerate(queued):
        by_type[part.container_type].append(i)
    for container_type in sorted(by_type):  # locks in one order: two intakes never wait on each other in a ring
        indexes = sorted(by_type[container_type], key=lambda i: queued[i].order)
        now = await _virtual_time(conn, container_type)
        finish = await _finish_of(conn, container_type, project)
        start = now if dependent or finish is None else max(now, finish)
        for rank, i in enumerate(indexes):
            priority = queued[i].priority
            if share.max_priority is not None:
                priority = min(priority, share.max_priority)
            # A partition ahead of the queue does not wait behind its own project's backlog either.
            base = now if priority > 0 else start
            keys[i] = base + rank / share.weight - priority * PRIORITY_STEP
        end = start + len(indexes) / share.weight
        if finish is None:
            await conn.execute(insert(fair_shares).values(container_type=container_type, project=project, finish=end))
        elif not dependent:
            await conn.execute(
                update(fair_shares)
                .where(fair_shares.c.container_type == container_type, fair_shares.c.project == project)
                .values(finish=end)
            )
    return keys


async def _virtual_time(conn: AsyncConnection, container_type: str) -> float:
    """The type's virtual time, moved on to the lowest key queued (kept: it never goes back, or a
    re-run's old key would rewind everyone). With nothing queued every project is caught up."""
    clock = (
        await conn.execute(
            select(fair_clocks.c.virtual_time).where(fair_clocks.c.container_type == container_type).with_for_update()
        )
    ).scalar()
    lowest = (
        await conn.execute(
            select(partitions.c.fair_key)
            .where(*claimable(container_type))
            .order_by(partitions.c.fair_key, partitions.c.seq)
            .limit(1)
        )
    ).scalar()
    if lowest is None:
        latest = (
            await conn.execute(
                select(func.max(fair_shares.c.finish)).where(fair_shares.c.container_type == container_type)
            )
        ).scalar()
        now = max(clock or 0.0, latest or 0.0)
    else:
        # Just before the lowest: a project that joins now goes ahead of the partition that would
        # start next anyway (a tie would send it behind that one, and the backlog's owner wins ties).
        now = max(clock or 0.0, lowest - JOIN_AHEAD)
    if clock is None:
        await conn.execute(insert(fair_clocks).values(container_type=container_type, virtual_time=now))
    elif now != clock:
        await conn.execute(
            update(fair_clocks).where(fair_clocks.c.container_type == container_type).values(virtual_time=now)
        )
    return now


async def _finish_of(conn: AsyncConnection, container_type: str, project: str) -> float | None:
    found = (
        await conn.execute(
            select(fair_shares.c.finish).where(
                fair_shares.c.container_type == container_type, fair_shares.c.project == project
            )
        )
    ).scalar()
    return None if found is None else float(found)


def claimable(container_type: str) -> list[Any]:
    """The claim's conditions, written out rather than bound: so the planner sees
    ix_partitions_claimable's own condition in every plan (a bound value hides it from a generic plan)."""
    return [
        partitions.c.state == literal_column(f"'{State.QUEUED.value}'"),
        partitions.c.claimed_by.is_(None),
        partitions.c.container_type == container_type,
    ]
