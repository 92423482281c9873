"""Small store helpers the job master's modules share."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.exc import IntegrityError

from infrax.store import Database


async def insert_once(db: Database, table: Table, values: dict[str, Any]) -> bool:
    """Insert a row; False (and nothing changed) when one with the same key is there already."""
    async with db.begin() as conn:
        try:
            async with conn.begin_nested():
                await conn.execute(insert(table).values(values))
        except IntegrityError:
            return False
    return True
