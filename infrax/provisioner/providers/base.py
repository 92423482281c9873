"""The container provider interface, shaped around a container's life, not around one cloud's API."""

from __future__ import annotations

import abc
import asyncio
import builtins
from collections import deque
from dataclasses import dataclass
from typing import Any

from infrax.agent.client import AgentClient
from infrax.model import ContainerType


class ProviderError(Exception):
    """The provider could not do what was asked; the message says what and where."""


@dataclass(frozen=True)
class Endpoint:
    """Where the agent inside a container listens."""

    host: str
    port: int


class ContainerProvider(abc.ABC):
    """Starts and stops containers that run the infrax agent.

    Every container a provider starts is marked as its own (a label, a folder), so that
    `list` finds the ones a crashed provisioner left behind and `destroy` can remove them.

    Options every kind understands (the provisioner reads them; defaults in brackets):

        heartbeat_interval   seconds between heartbeats of each container [1.5]
        heartbeat_timeout    seconds a heartbeat may take before it counts as failed [1]
        heartbeat_failures   failed heartbeats in a row that make a container lost [3]; one is
                             enough when `alive` then says the container no longer runs
        failure_backoff      seconds the provisioner leaves the provider alone after a `create`
                             failed [5]; doubled on each further failure in a row, up to
        failure_backoff_max  [120]
    """

    kind: str = "abstract"

    def __init__(self, name: str, capacity: int | None = None, options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.options = options or {}
        self.start_durations: deque[float] = deque(maxlen=256)  # seconds from create to agent ready
        o = self.options
        self.heartbeat_interval = float(o.get("heartbeat_interval", 1.5))
        self.heartbeat_timeout = float(o.get("heartbeat_timeout", 1.0))
        self.heartbeat_failures = int(o.get("heartbeat_failures", 3))
        self.failure_backoff = float(o.get("failure_backoff", 5.0))
        self.failure_backoff_max = float(o.get("failure_backoff_max", 120.0))
        if self.heartbeat_interval <= 0 or self.heartbeat_timeout <= 0 or self.heartbeat_failures < 1:
            raise ValueError(
                f"provider {name}: heartbeat_interval and heartbeat_timeout must be > 0, heartbeat_failures >= 1"
            )

    @abc.abstractmethod
    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Endpoint:
        """Start a container whose agent accepts `secret`; return once the agent listens."""

    @abc.abstractmethod
    async def alive(self, container_id: str) -> bool:
        """Whether the container still exists and runs (not whether its agent answers)."""

    async def heartbeat(self, endpoint: Endpoint, secret: str) -> dict[str, Any]:
        """Ask the container's agent how it is; raises (AgentError, AgentConnectionLost,
        AgentUnreachable or TimeoutError) when it does not answer within `heartbeat_timeout`.

        The agent protocol's heartbeat, straight to the endpoint; a provider whose agents are
        reached some other way (a tunnel, an API) overrides this.
        """
        client = AgentClient(
            endpoint.host,
            endpoint.port,
            secret,
            connect_timeout=self.heartbeat_timeout,
            request_timeout=self.heartbeat_timeout,
        )
        async with asyncio.timeout(self.heartbeat_timeout):
            return await client.heartbeat()

    @abc.abstractmethod
    async def destroy(self, container_id: str) -> None:
        """Stop and remove the container; a container already gone is no error."""

    @abc.abstractmethod
    async def list(self) -> list[str]:
        """Ids of every container this provider owns, including leaked ones."""

    def draining(self, container_id: str) -> bool:
        """Whether the container's host is being emptied (a worker drains): it takes no new run,
        and is stopped once idle."""
        return False

    async def adoptable(self) -> builtins.list[tuple[str, str, Endpoint]]:
        """(container id, container type, endpoint) of this provider's containers that may still
        run: what a provisioner after a crash tries to adopt. A provider that cannot tell says none."""
        return []

    async def close(self) -> None:
        return None
