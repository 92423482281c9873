"""What the provisioner says on the bus of its containers: each start, loss and stop as it
happens, and free capacity as a hint, in one event per container type for those freed together."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from infrax.bus import Bus, BusError, topics
from infrax.bus.messages import ContainerEvent

log = logging.getLogger(__name__)


class Announcements:
    def __init__(self, bus: Bus, spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.bus = bus
        self.spawn = spawn
        self._free_unannounced: dict[str, int] = {}  # container type -> freed since the last event

    def free(self, type_name: str) -> None:
        """Say on the bus that a container of this type is free, in one event with any others.

        Containers freed in the same turn of the event loop (a batch of releases) make one event
        per type. The publish is not awaited here: the broker confirms persistent messages tens
        of milliseconds later under load, and the scheduler should hear of free capacity now.
        """
        if not self._free_unannounced:
            asyncio.get_running_loop().call_soon(self._announce)
        self._free_unannounced[type_name] = self._free_unannounced.get(type_name, 0) + 1

    def _announce(self) -> None:
        counts, self._free_unannounced = self._free_unannounced, {}
        for type_name, count in counts.items():
            message = ContainerEvent(event="free", container_type=type_name, count=count)
            self.spawn(self._publish_hint(topics.routing_key(container_type=type_name, state="free"), message))

    async def _publish_hint(self, routing_key: str, message: ContainerEvent) -> None:
        try:
            await self.bus.publish(topics.CONTAINERS, routing_key, message.wire())
        except BusError as error:
            # A hint only: the scheduler also asks for capacity on its own every few seconds.
            log.warning("could not announce %d free %s containers: %s", message.count, message.container_type, error)

    async def event(self, event: str, type_name: str, container_id: str, start_seconds: float | None = None) -> None:
        message = ContainerEvent(
            event=event,  # type: ignore[arg-type]
            container_type=type_name,
            container_id=container_id,
            start_seconds=start_seconds,
        )
        await self.bus.publish(
            topics.CONTAINERS, topics.routing_key(container_type=type_name, state=event), message.wire()
        )
