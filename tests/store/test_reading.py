"""`Database.reading()`: long reads apart from the event loop's thread and the one writer."""

from __future__ import annotations

import asyncio
import threading

from sqlalchemy import insert, select, text

from infrax.model import utcnow
from infrax.store import Database
from infrax.store.tables import requests


async def test_a_read_on_sqlite_runs_while_the_event_loop_goes_on(database: Database) -> None:
    """The statement waits for the loop itself: run on the loop's thread, it could never end."""
    await database.create_schema()
    released = threading.Event()
    if database.is_sqlite:
        await database._reader.run(  # type: ignore[union-attr]
            lambda sync: sync.connection.driver_connection.create_function(  # type: ignore[union-attr]
                "wait_for_the_loop", 0, lambda: int(released.wait(10))
            )
        )
        statement = text("SELECT wait_for_the_loop()")
    else:
        statement = text("SELECT 1")

    async def release() -> None:
        await asyncio.sleep(0)
        released.set()

    async with database.reading() as conn:
        result, _ = await asyncio.gather(conn.execute(statement), release())

    assert result.scalar() == 1


async def test_a_read_sees_what_was_committed_and_the_writer_goes_on_while_it_reads(database: Database) -> None:
    await database.create_schema()
    row = {"id": "r1", "project": "p", "state": "pending", "created_at": utcnow(), "updated_at": utcnow()}
    async with database.begin() as conn:
        await conn.execute(insert(requests), row)

    async with database.reading() as reader:
        seen = (await reader.execute(select(requests.c.id))).scalars().all()
        async with database.begin() as writer:  # not blocked by the read
            await writer.execute(insert(requests), {**row, "id": "r2"})
        seen_after = (await reader.execute(select(requests.c.id).order_by(requests.c.id))).scalars().all()

    assert seen == ["r1"]
    assert seen_after == ["r1", "r2"]  # each statement reads the newest commit, no snapshot held open
