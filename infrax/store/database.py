"""One database, chosen by URL: SQLite for the embedded default, PostgreSQL for production."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(Exception):
    """The database could not do what was asked, after bounded retries."""


def async_url(url: str) -> str:
    """Accept the plain URLs users write and pick the async driver."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


class Database:
    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            path = self.url.split(":///", 1)[1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # SQLite is a local file that answers in microseconds: it is driven straight from the
            # event loop's thread, one transaction at a time. A worker thread per statement (aiosqlite)
            # cost ten times the statement itself, and SQLite has one writer anyway.
            self._sqlite = create_engine(
                "sqlite:///" + path, connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=1, max_overflow=0,
            )
            event.listen(self._sqlite, "connect", _sqlite_pragmas)
            self._turn = asyncio.Lock()
        else:
            self.engine: AsyncEngine = create_async_engine(self.url, pool_size=10, max_overflow=10)
            self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    async def create_schema(self) -> None:
        """Bring the schema to the newest migration (one transaction; a no-op when it is there)."""
        from infrax.store import migrate

        async with self.begin() as conn:
            if self.is_sqlite:
                await migrate.upgrade(conn)
            else:
                # Several components may start at once against one PostgreSQL: one migrates, the rest wait.
                await conn.execute(text("SELECT pg_advisory_xact_lock(7310)"))
                await migrate.upgrade(conn)

    async def close(self) -> None:
        if self.is_sqlite:
            self._sqlite.dispose()
        else:
            await self.engine.dispose()

    def begin(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A transaction: committed when the block ends, rolled back when it raises."""
        return self._connection(autocommit=False)

    def each_alone(self) -> AbstractAsyncContextManager[AsyncConnection]:
        """A connection whose every statement commits by itself, for work of statements that each
        stand alone: on PostgreSQL that spares the BEGIN and COMMIT round trips of a transaction,
        a third of a short one's cost. On SQLite it is `begin()`."""
        return self._connection(autocommit=True)

    @asynccontextmanager
    async def _connection(self, autocommit: bool) -> AsyncIterator[AsyncConnection]:
        try:
            if self.is_sqlite:
                async with self._turn:
                    with self._sqlite.begin() as sync:
                        yield _InLoopConnection(sync)  # type: ignore[misc]
            else:
                async with self._autocommit.connect() if autocommit else self.engine.begin() as conn:
                    yield conn
        except (OperationalError, DBAPIError) as error:
            raise StoreError(f"database error: {error.orig or error}") from error

    async def retrying(self, work: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
        """Run `work` again when the database was briefly unavailable or locked."""
        for attempt in range(attempts):
            try:
                return await work()
            except StoreError:
                if attempt == attempts - 1:
                    raise
                log.warning("database busy, retrying", exc_info=True)
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")


class _InLoopConnection:
    """The part of AsyncConnection that infrax uses, over a blocking SQLite connection."""

    def __init__(self, sync: Connection) -> None:
        self.sync = sync

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self.sync.execute(statement, parameters)

    async def run_sync(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return work(self.sync, *args, **kwargs)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[_InLoopConnection]:
        with self.sync.begin_nested():
            yield self


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while one writer commits; NORMAL sync is still crash-safe in WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in infrax is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value
