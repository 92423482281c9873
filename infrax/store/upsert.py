"""Insert a row, or update it where its key is there already: one statement on either database."""

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
