"""The container provider interface, shaped around a container's life, not around one cloud's API."""

from __future__ import annotations

import abc
from collections import deque
from dataclasses import dataclass
from typing import Any

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
    """

    kind: str = "abstract"

    def __init__(self, name: str, capacity: int | None = None, options: dict[str, Any] | None = None) -> None:
        self.name = name
        self.capacity = capacity
        self.options = options or {}
        self.start_durations: deque[float] = deque(maxlen=256)  # seconds from create to agent ready

    @abc.abstractmethod
    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Endpoint:
        """Start a container whose agent accepts `secret`; return once the agent listens."""

    @abc.abstractmethod
    async def alive(self, container_id: str) -> bool:
        """Whether the container still exists and runs (not whether its agent answers)."""

    @abc.abstractmethod
    async def destroy(self, container_id: str) -> None:
        """Stop and remove the container; a container already gone is no error."""

    @abc.abstractmethod
    async def list(self) -> list[str]:
        """Ids of every container this provider owns, including leaked ones."""

    async def close(self) -> None:
        return None
