"""Bringing a database's schema up to date (`infrax db upgrade`, and every component at start)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(connection: Connection | None = None) -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    head_revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head_revision is not None
    return head_revision


async def upgrade(conn: AsyncConnection, revision: str = "head") -> None:
    await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def downgrade(conn: AsyncConnection, revision: str) -> None:
    await conn.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))


async def current(conn: AsyncConnection) -> str | None:
    return await conn.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())
