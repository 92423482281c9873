"""The transactional outbox: a component's messages are stored with the change they announce.

A state change and the messages about it are written in one transaction (`Outbox.begin`); a
relay publishes the stored messages in the order they were written, waits for the broker's
confirms and only then deletes them. A crash anywhere loses nothing: what was committed is
published by the next relay, at least once (consumers are idempotent). Several relays on one
PostgreSQL table are safe: each round takes the table's advisory lock (`pg_try_advisory_xact_lock`),
so one relay publishes at a time and rows leave in `id` order; a plain `SKIP LOCKED` per row
would let two relays publish one partition's changes out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections.abc import AsyncIterator, Iterable
from typing import Any

from sqlalchemy import Table, delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus import Bus, schemas
from infrax.bus.base import CC, BusError, Encoded
from infrax.bus.messages import BusMessage
from infrax.model import utcnow
from infrax.retry import outage
from infrax.store import Database, StoreError

log = logging.getLogger(__name__)

RELAY_BATCH = 1000
RELAY_LINGER = 0.002
POLL_INTERVAL = 1.0  # for rows another process wrote (or a crash left); new rows wake the relay

# exchange, routing key, body (a plain object, or a message model)[, CC: more routing keys of it]
Body = dict[str, Any] | BusMessage
Outgoing = tuple[str, str, Body] | tuple[str, str, Body, list[str]]


class Outbox:
    def __init__(self, db: Database, bus: Bus, table: Table) -> None:
        self.db = db
        self.bus = bus
        self.table = table
        self._lock_key = zlib.crc32(table.name.encode())
        self._wanted = asyncio.Event()
        self._idle = asyncio.Event()
        self._relay: asyncio.Task[None] | None = None
        self._contended = 0
        self._broker = outage("the broker")
        self._store = outage("the database")

    # -- writing ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[tuple[AsyncConnection, list[Outgoing]]]:
        """A transaction and a list: messages appended to the list are committed with it."""
        messages: list[Outgoing] = []
        async with self.db.begin() as conn:
            yield conn, messages
            await self.add(conn, messages)
        if messages:
            self.wake()

    async def add(self, conn: AsyncConnection, messages: Iterable[Outgoing]) -> None:
        """Write messages in the caller's transaction; checked now, so a bad one fails the change
        (a model was checked when it was built)."""
        now = utcnow()
        rows = [
            {
                "exchange": exchange,
                "routing_key": key,
                "body": (
                    schemas.encode_message(exchange, body)
                    if isinstance(body, BusMessage)
                    else schemas.encode(exchange, body)
                ).decode(),
                "created_at": now,
                "cc": " ".join(cc[0]) if cc and cc[0] else None,
            }
            for exchange, key, body, *cc in messages
        ]
        if rows:
            await conn.execute(insert(self.table), rows)

    def wake(self) -> None:
        self._idle.clear()
        self._wanted.set()

    # -- relaying ---------------------------------------------------------------------------

    def start(self) -> None:
        if self._relay is None:
            self._relay = asyncio.create_task(self._run(), name=f"relay-{self.table.name}")
            self.wake()

    async def stop(self) -> None:
        """Publish what is there if the broker takes it soon, then stop relaying."""
        if self._relay is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drained(), 5.0)
        self._relay.cancel()
        await asyncio.gather(self._relay, return_exceptions=True)
        self._relay = None

    async def drained(self) -> None:
        """Until every message committed so far has been published and confirmed (by this call,
        when the relay is not running: a test stepping a component by hand)."""
        if self._relay is None:
            while await self.relay_once():
                pass
            return
        self.wake()
        await self._idle.wait()

    async def _run(self) -> None:
        pause = 0.0
        while True:
            if pause:
                await asyncio.sleep(pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), POLL_INTERVAL)
            self._wanted.clear()
            # A moment for more commits to join this round: under load, rounds (five round trips to
            # the database and a broker confirm each) of a few rows cost more than the rows.
            await asyncio.sleep(RELAY_LINGER)
            try:
                while await self.relay_once():
                    pass
            except (BusError, StoreError) as error:
                (self._broker if isinstance(error, BusError) else self._store).failed(error)
                pause = min(max(pause * 2, 0.1), 2.0)
                continue
            except Exception:
                log.exception("relaying %s failed", self.table.name)
                pause = 1.0
                continue
            pause = 0.0
            if not self._wanted.is_set():
                self._idle.set()

    async def relay_once(self) -> bool:
        """Publish the oldest stored messages; True when more may be waiting."""
        table = self.table
        query = select(table.c.id, table.c.exchange, table.c.routing_key, table.c.body, table.c.cc).order_by(table.c.id)
        if self.db.is_sqlite:
            # One process owns an SQLite file, and its one connection is everybody's: not held while
            # the broker confirms.
            async with self.db.begin() as conn:
                rows = (await conn.execute(query.limit(RELAY_BATCH))).all()
            if not rows:
                return False
            await self.bus.publish_encoded(map(_encoded, rows))
            async with self.db.begin() as conn:
                await conn.execute(delete(table).where(table.c.id.in_([r.id for r in rows])))
        else:
            async with self.db.begin() as conn:
                if not (await conn.execute(select(func.pg_try_advisory_xact_lock(self._lock_key)))).scalar():
                    # Another relay is publishing; it may take ours too, or be done in a moment.
                    self._contended += 1
                    await asyncio.sleep(0.05)
                    return self._contended % 20 != 0
                self._contended = 0
                rows = (await conn.execute(query.limit(RELAY_BATCH))).all()
                if not rows:
                    return False
                await self.bus.publish_encoded(map(_encoded, rows))
                # By id, never `id <= last`: a row of a transaction that committed after the SELECT
                # (with a smaller id, taken earlier) is not published yet and must stay.
                await conn.execute(delete(table).where(table.c.id.in_([r.id for r in rows])))
        self._broker.recovered()
        self._store.recovered()
        return len(rows) == RELAY_BATCH


def _encoded(row: Any) -> Encoded:
    if row.cc:
        return (row.exchange, row.routing_key, row.body.encode(), {CC: row.cc.split()})
    return (row.exchange, row.routing_key, row.body.encode())
