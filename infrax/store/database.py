"""One database, chosen by URL: SQLite for the embedded default, PostgreSQL for production."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, overload

from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from infrax.retry import outage, retry

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(Exception):
    """The database could not be reached or was busy: nothing was done, and the same work may be
    tried again later (HTTP 503). Only connection-level failures and lock time-outs are this."""


class Conflict(Exception):
    """A row with the same key is there already, or a row it refers to is not (a unique or foreign
    key clash): for the caller an idempotent repeat or a 409, never worth retrying as it is."""


class InvalidData(Exception):
    """The database refused the values themselves (out of range, too long, not of the type): the
    caller's mistake, a 4xx."""


def async_url(url: str) -> str:
    """Accept the plain URLs users write and pick the async driver."""
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url.removeprefix("sqlite:///")
    if url.startswith(("postgresql://", "postgres://")):
        return "postgresql+asyncpg://" + url.split("://", 1)[1]
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite store's URL; None for another database or an in-memory one."""
    if not url.startswith(("sqlite:///", "sqlite+aiosqlite:///")):
        return None
    path = url.split(":///", 1)[1]
    return Path(path) if path and path != ":memory:" else None


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
                "sqlite:///" + path,
                connect_args={"timeout": 30, "check_same_thread": False},
                pool_size=1,
                max_overflow=0,
            )
            event.listen(self._sqlite, "connect", _sqlite_pragmas)
            self._turn = asyncio.Lock()
            self._reader = _ReaderThread(path) if path and path != ":memory:" else None
            self._checkpointer = _Checkpointer(path) if path and path != ":memory:" else None
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
            if self._reader is not None:
                self._reader.stop()
            if self._checkpointer is not None:
                self._checkpointer.stop()
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
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that may be long (a count over the whole queue, a page of it),
        of data already committed. On SQLite its statements run in a thread and on a connection of
        their own (WAL readers neither wait for the writer nor stop it), so the event loop's thread
        and the one writer go on meanwhile; on PostgreSQL it is `each_alone()`."""
        if not self.is_sqlite or self._reader is None:
            async with self.each_alone() as conn:
                yield conn
            return
        try:
            yield self._reader.connection()  # type: ignore[misc]
        except DBAPIError as error:
            kind = _classify(error)
            if kind is None:
                raise
            raise kind(f"{error.orig or error}") from error

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
        except DBAPIError as error:
            kind = _classify(error)
            if kind is None:
                raise  # a statement the database could not run is a bug in infrax: it goes up as it is
            raise kind(f"{error.orig or error}") from error
        except ConnectionError as error:  # the server refused or dropped the connection (asyncpg's own)
            raise StoreError(f"database unreachable: {error!r}") from error

    async def retrying(
        self, work: Callable[[], Awaitable[T]], attempts: int = 5, also: tuple[type[Exception], ...] = ()
    ) -> T:
        """Run `work` again when the database was briefly unavailable or locked (or raised one of
        `also`: a read-then-write that lost a race to another writer raises Conflict)."""
        return await retry(
            work, on=(StoreError, *also), attempts=attempts, first=0.05, maximum=1.0, during=outage("the database")
        )


class _InLoopConnection:
    """The part of AsyncConnection that infrax uses, over a blocking SQLite connection."""

    def __init__(self, sync: Connection) -> None:
        self.sync = sync

    @property
    def dialect(self) -> Any:
        return self.sync.dialect

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        return self.sync.execute(statement, parameters)

    async def run_sync(self, work: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return work(self.sync, *args, **kwargs)

    @asynccontextmanager
    async def begin_nested(self) -> AsyncIterator[_InLoopConnection]:
        with self.sync.begin_nested():
            yield self


# SQLSTATE classes (PostgreSQL) and result codes (SQLite) by what they mean to the caller.
_PG_CLASSES: dict[str, type[Exception]] = {
    "08": StoreError,  # connection exception
    "53": StoreError,  # insufficient resources
    "57": StoreError,  # operator intervention: shutting down, cannot connect now
    "58": StoreError,  # system error (I/O)
    "40": StoreError,  # serialization failure, deadlock: the transaction may simply be run again
    "55": StoreError,  # lock not available
    "23": Conflict,  # integrity constraint violation
    "22": InvalidData,  # data exception
}
_SQLITE_CODES: dict[str, type[Exception]] = {
    "SQLITE_BUSY": StoreError,
    "SQLITE_LOCKED": StoreError,
    "SQLITE_CANTOPEN": StoreError,
    "SQLITE_IOERR": StoreError,
    "SQLITE_FULL": StoreError,
    "SQLITE_READONLY": StoreError,
    "SQLITE_PROTOCOL": StoreError,
    "SQLITE_NOMEM": StoreError,
    "SQLITE_CONSTRAINT": Conflict,
    "SQLITE_TOOBIG": InvalidData,
    "SQLITE_MISMATCH": InvalidData,
    "SQLITE_RANGE": InvalidData,
}


def _classify(error: DBAPIError) -> type[Exception] | None:
    """StoreError, Conflict or InvalidData for a driver error; None for one that means a bug."""
    if error.connection_invalidated or isinstance(error, InterfaceError):
        return StoreError
    cause = error.orig.__cause__ if error.orig is not None else None  # asyncpg's own, under SQLAlchemy's adapter
    sqlstate = getattr(cause, "sqlstate", None) or getattr(error.orig, "sqlstate", None)
    if isinstance(sqlstate, str):
        return _PG_CLASSES.get(sqlstate[:2])
    if isinstance(cause, (OSError, asyncio.TimeoutError)):
        return StoreError
    name = getattr(error.orig, "sqlite_errorname", None)
    if isinstance(name, str):
        return _SQLITE_CODES.get("_".join(name.split("_")[:2]))  # SQLITE_CONSTRAINT_UNIQUE: SQLITE_CONSTRAINT
    if isinstance(error, IntegrityError):
        return Conflict
    if isinstance(error, DataError):
        return InvalidData
    return None


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers go on while one writer commits; NORMAL sync is still crash-safe in WAL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # Checkpoints run in a thread of their own (_Checkpointer): a commit that checkpoints copies and
    # syncs megabytes, hundreds of milliseconds in the thread that drives the event loop.
    cursor.execute("PRAGMA wal_autocheckpoint=0")
    cursor.close()


class _ReaderThread:
    """One thread, one read-only SQLite connection: each statement is one hop to it and back,
    its rows fetched there (a scan's work is in fetching them)."""

    def __init__(self, path: str) -> None:
        self._engine = create_engine(
            "sqlite:///" + path,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=1,
            max_overflow=0,
        )
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._sync: Connection | None = None
        self._stopped = False

    def connection(self) -> _ReaderConnection:
        return _ReaderConnection(self)

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._in_thread, work)

    def _in_thread(self, work: Callable[[Connection], T]) -> T:
        if self._sync is None:
            self._sync = self._engine.connect()
            self._sync.exec_driver_sql("PRAGMA query_only=1")
        try:
            return work(self._sync)
        finally:
            self._sync.rollback()  # each statement its own snapshot: never a read transaction held open

    def stop(self) -> None:
        if self._stopped:  # a database closed twice (a test's teardown after the stack's own)
            return
        self._stopped = True

        def close() -> None:
            if self._sync is not None:
                self._sync.close()

        self._executor.submit(close)
        self._executor.shutdown(wait=True)
        self._engine.dispose()


class _ReaderConnection:
    """The part of AsyncConnection that infrax's reads use, over the reader thread."""

    def __init__(self, reader: _ReaderThread) -> None:
        self._reader = reader

    async def execute(self, statement: Any, parameters: Any = None) -> Any:
        frozen = await self._reader.run(lambda sync: sync.execute(statement, parameters).freeze())
        return frozen()


class _Checkpointer:
    """Copies the WAL into the database file every second, from a thread and a connection of its
    own (SQLite releases the GIL while it works); PASSIVE, so it never waits for, nor blocks, the
    event loop's connection."""

    INTERVAL = 1.0

    def __init__(self, path: str) -> None:
        self._path = path
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        connection: sqlite3.Connection | None = None
        while not self._stopped.wait(self.INTERVAL):
            try:
                if connection is None:
                    connection = sqlite3.connect(self._path, timeout=0.1, check_same_thread=False)
                connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as error:  # the next round tries again; the WAL only grows meanwhile
                log.debug("checkpoint of %s postponed: %s", self._path, error)
        if connection is not None:
            try:
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                pass
            connection.close()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=10)


@overload
def aware(value: datetime) -> datetime: ...
@overload
def aware(value: None) -> None: ...
@overload
def aware(value: datetime | None) -> datetime | None: ...
def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything in infrax is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value
