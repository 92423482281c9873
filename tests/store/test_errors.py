"""Driver errors become infrax's own, by what they mean: retry later, already there, or bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import insert, text

from infrax.model import utcnow
from infrax.store import Conflict, Database, InvalidData, StoreError
from infrax.store.tables import runs
from tests.conftest import fresh_postgres_url


async def test_a_unique_key_clash_is_a_conflict_and_not_retried(database: Database) -> None:
    await database.create_schema()
    row = {
        "run_id": "r-0",
        "partition_id": "p",
        "executioner": "e",
        "assignment": {},
        "state": "accepted",
        "log_path": "/x",
        "created_at": utcnow(),
    }
    async with database.begin() as conn:
        await conn.execute(insert(runs).values(row))
    attempts = 0

    async def insert_again() -> None:
        nonlocal attempts
        attempts += 1
        async with database.begin() as conn:
            await conn.execute(insert(runs).values(row))

    with pytest.raises(Conflict):
        await database.retrying(insert_again)
    assert attempts == 1, "a conflict is final: trying it again changes nothing"
    # The same in a connection whose statements commit alone.
    with pytest.raises(Conflict):
        async with database.each_alone() as conn:
            await conn.execute(insert(runs).values(row))


async def test_values_the_database_refuses_are_invalid_data() -> None:
    # PostgreSQL only: SQLite keeps any value in any column, so it has no such refusal.
    async for url in fresh_postgres_url():
        database = Database(url)
        try:
            with pytest.raises(InvalidData):
                async with database.begin() as conn:
                    await conn.execute(text("SELECT CAST('not a number' AS integer)"))
        finally:
            await database.close()


async def test_a_database_that_cannot_be_reached_is_unavailable(tmp_path: Path) -> None:
    for url in ("postgresql://postgres@127.0.0.1:1/nothing", f"sqlite:///{tmp_path}"):  # a folder is no file
        database = Database(url)
        try:
            with pytest.raises(StoreError):
                async with database.begin() as conn:
                    await conn.execute(text("SELECT 1"))
        finally:
            await database.close()


async def test_a_statement_infrax_got_wrong_is_not_called_unavailable(database: Database) -> None:
    with pytest.raises(Exception) as raised:
        async with database.begin() as conn:
            await conn.execute(text("SELECT no_such_column FROM no_such_table"))
    assert not isinstance(raised.value, (StoreError, Conflict, InvalidData))
