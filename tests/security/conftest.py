"""The attack tests run on the embedded stack of the e2e tests (the same code runs on PostgreSQL and RabbitMQ)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.containers.conftest import agent_image, docker_client, docker_url
from tests.e2e.conftest import start_stack
from tests.jobmaster.conftest import github_api

__all__ = ["agent_image", "docker_client", "docker_url", "github_api", "start_stack"]


@pytest.fixture
async def backend() -> AsyncIterator[dict[str, str]]:
    yield {}
