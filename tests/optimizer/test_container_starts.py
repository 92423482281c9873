"""Container starts learned per type: each start once, none lost when two are folded at once."""

from __future__ import annotations

import asyncio

import pytest

from infrax.bus.messages import ContainerEvent
from infrax.optimizer.container_starts import StartHistory
from infrax.store import Database


@pytest.fixture
async def db(database: Database) -> Database:
    """SQLite and PostgreSQL: the race is PostgreSQL's to lose."""
    await database.create_schema()
    return database


def started(container_id: str, seconds: float, type_name: str = "linux") -> ContainerEvent:
    return ContainerEvent(event="started", container_type=type_name, container_id=container_id, start_seconds=seconds)


async def test_starts_folded_at_once_are_all_counted_and_a_redelivery_once(db: Database) -> None:
    history = StartHistory(db)
    await asyncio.gather(*(history.record([started(f"c{n}", 1.0 + n)]) for n in range(6)))
    await history.record([started("c0", 1.0)])  # redelivered
    (row,) = await history.rows()
    assert (row.container_type, row.samples, row.seconds) == ("linux", 6, 3.5)
    assert (await history.load())["linux"] == (3.5, 6)


async def test_the_estimate_is_the_mean_of_the_last_ten(db: Database) -> None:
    history = StartHistory(db)
    for n in range(12):
        await history.record([started(f"c{n}", 10.0 if n < 2 else 1.0)])
    assert (await history.load())["linux"] == (1.0, 12)
    await history.record([ContainerEvent(event="free", container_type="linux"), started("x", 1.0, "mac")])
    assert set(await history.load()) == {"linux", "mac"}
