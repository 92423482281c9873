"""Insert a row, or update it where its key is there already (or leave it): one statement on either database."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection


async def upsert(conn: AsyncConnection, table: Table, values: dict[str, Any], keys: Iterable[str]) -> None:
    keys = list(keys)
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    changed = {name: statement.excluded[name] for name in values if name not in keys}
    await conn.execute(statement.on_conflict_do_update(index_elements=keys, set_=changed))


async def insert_missing(conn: AsyncConnection, table: Table, values: dict[str, Any], keys: Iterable[str]) -> None:
    """Insert the row unless its key is there already: then a `SELECT … FOR UPDATE` of it finds a row
    to lock, and concurrent read-modify-writes of it take turns instead of losing one another's."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(keys)))
