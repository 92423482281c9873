"""A fresh database per test, on each backend: SQLite in a temporary folder, and a new PostgreSQL database."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from infrax.store import Database

POSTGRES = os.environ.get("INFRAX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


async def fresh_postgres_url() -> AsyncIterator[str]:
    """A database of its own for one test, dropped afterwards; skip (fail in CI) without a server."""
    name = f"infrax_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES} is not reachable: {error}")
        pytest.skip(f"PostgreSQL at {POSTGRES} is not reachable: {error}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"{POSTGRES}/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'infrax.db'}")
        yield db
        await db.close()
        return
    async for url in fresh_postgres_url():
        db = Database(url)
        yield db
        await db.close()
