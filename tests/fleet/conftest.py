"""The fleet suites run on the job master's fixtures (its backends and stacks), the container
suites' (an engine, the agent image, a provider on it) and the distributed suite's (a database and
a broker of their own for processes that share them)."""

from __future__ import annotations

from tests.containers.conftest import agent_image, docker_client, docker_provider, docker_url, scripts
from tests.distributed.conftest import cluster_backends
from tests.jobmaster.conftest import backend, start_stack

__all__ = [
    "agent_image",
    "backend",
    "cluster_backends",
    "docker_client",
    "docker_provider",
    "docker_url",
    "scripts",
    "start_stack",
]
