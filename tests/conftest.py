"""Fixtures shared by the suites: real stacks of infrax components on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import pytest
from yarl import URL

from infrax.auth import ADMIN, Guard, Security, TokenStore
from infrax.store import Database

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file of the team's reference data, read in place; a missing folder skips, except in CI."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI always has ../shared beside the repository")
        pytest.skip(f"{path} is absent (the ../shared reference folder is not beside this checkout)")
    return path


# -- the real services: RabbitMQ and PostgreSQL ------------------------------------------------

AMQP_URL = os.environ.get("INFRAX_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")


def unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the real service is required)")
    pytest.skip(reason)


def rabbitmqctl(*args: str, timeout: float = 60) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=timeout)


@pytest.fixture(scope="session")
def rabbitmq_url() -> Iterator[str]:
    url = URL(AMQP_URL)
    try:
        socket.create_connection((url.host or "127.0.0.1", url.port or 5672), timeout=2).close()
    except OSError as e:
        unavailable(
            f"RabbitMQ is not reachable at {url.host}:{url.port} ({e}); start it with `rabbitmq-server -detached`"
        )
    if shutil.which("rabbitmqctl") is None:
        yield AMQP_URL
        return
    vhost = f"infrax-test-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, url.user or "guest", ".*", ".*", ".*")
        yield str(url.with_path("/" + vhost, encoded=False))
    finally:
        rabbitmqctl("delete_vhost", vhost)


POSTGRES = os.environ.get("INFRAX_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")


async def fresh_postgres_url() -> AsyncIterator[str]:
    """A database of its own for one test, dropped afterwards; skip (fail in CI) without a server."""
    name = f"infrax_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        unavailable(f"PostgreSQL at {POSTGRES} is not reachable: {error}")
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        await admin.close()
        yield f"{POSTGRES}/{name}"
    finally:
        # A connection of its own: a test may have restarted the server meanwhile.
        admin = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=30)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    """A fresh, empty database per test, on each backend: SQLite in a temporary folder, a new PostgreSQL one."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'infrax.db'}")
        yield db
        await db.close()
        return
    async for url in fresh_postgres_url():
        db = Database(url)
        yield db
        await db.close()


async def secured(db: Database) -> tuple[Security, dict[str, str]]:
    """What an app under test is made with (any Host, tokens in `db`), and an admin's Authorization header."""
    await db.create_schema()
    tokens = TokenStore(db)
    _, token = await tokens.create("test admin", [ADMIN])
    return Security(Guard(tokens), None), {"Authorization": f"Bearer {token}"}
