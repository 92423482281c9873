"""The schema that the migrations build is the one the code declares, on SQLite and on PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from infrax.store import migrate
from infrax.store.tables import metadata


async def test_migrations_build_exactly_the_declared_schema(database) -> None:
    await database.create_schema()
    async with database.begin() as conn:
        differences = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
        )
        assert await migrate.current(conn) == migrate.head()
    assert differences == []


async def test_upgrade_is_idempotent_and_downgrade_removes_everything(database) -> None:
    await database.create_schema()
    await database.create_schema()
    async with database.begin() as conn:
        await migrate.downgrade(conn, "base")
        tables = await conn.run_sync(lambda sync: sync.dialect.get_table_names(sync))
    assert set(tables) <= {"alembic_version"}
    await database.create_schema()
