"""A fresh database per test, on each backend: SQLite in a temporary folder, and a new PostgreSQL database."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrax.store import Database
from tests.conftest import fresh_postgres_url

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
