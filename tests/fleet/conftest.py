"""The fleet suites run on the job master's fixtures (its backends and stacks) and the container
suites' (an engine, the agent image, a provider on it)."""

from __future__ import annotations

from tests.containers.conftest import agent_image, docker_client, docker_provider, docker_url, scripts
from tests.jobmaster.conftest import backend, start_stack

__all__ = ["agent_image", "backend", "docker_client", "docker_provider", "docker_url", "scripts", "start_stack"]
