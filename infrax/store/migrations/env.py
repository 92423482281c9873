"""Alembic's environment: one set of migrations for SQLite and PostgreSQL.

infrax runs it through `infrax.store.migrate` with a connection of its own (the async engine's,
through run_sync); the `alembic` command line works too, given `sqlalchemy.url`.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from infrax.store.database import async_url
from infrax.store.tables import metadata


def run(connection: Connection) -> None:
    # Batch mode lets ALTER TABLE work on SQLite, which can alter little in place.
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    engine = create_async_engine(async_url(url), poolclass=NullPool)
    async with engine.begin() as connection:
        await connection.run_sync(run)
    await engine.dispose()


shared = context.config.attributes.get("connection")
if shared is not None:
    run(shared)
else:
    asyncio.run(run_with_own_engine(context.config.get_main_option("sqlalchemy.url") or ""))
