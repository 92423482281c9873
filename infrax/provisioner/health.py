"""Health of containers (their agents' heartbeats) and of providers (a rest after a failed start).

Every idle or busy container is heartbeated every `heartbeat_interval` seconds of its provider
(default 1.5), each heartbeat given `heartbeat_timeout` (1). A failed heartbeat asks the provider
whether the container still runs (`alive`): if not, the container is lost at once; if it runs but
its agent does not answer, it is lost after `heartbeat_failures` (3) failures in a row. Counted
from the last answer, a container that stops answering is lost within
interval × failures + timeout + one tick of 0.25 s (5.75 s with the defaults), and one that is
gone (killed, removed) within interval + tick + the provider's `alive` call (about 2 s).
Then the provisioner reports its run lost, destroys it and keeps the warm pool.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from infrax.agent.client import AgentConnectionLost, AgentError, AgentUnreachable
from infrax.model import ContainerState, utcnow
from infrax.provisioner.providers import ContainerProvider, ProviderError

if TYPE_CHECKING:
    from infrax.provisioner.slots import Slot

log = logging.getLogger(__name__)

# What a heartbeat that did not work raises.
HEARTBEAT_ERRORS = (AgentError, AgentConnectionLost, AgentUnreachable, TimeoutError, OSError)
PROBED = (ContainerState.IDLE, ContainerState.BUSY)

# Why a container was lost: the label of the metric, and a word for messages.
GONE = "gone"
UNRESPONSIVE = "unresponsive"
BROKEN = "broken"  # it answers, but says it cannot run another partition


class ProviderHealth:
    """Whether a provider may be asked for containers: after a failed `create` it rests a while.

    The rest is `failure_backoff` seconds, doubled for each further failure in a row (up to
    `failure_backoff_max`); the first success ends it. After the rest the provider is tried
    again by the next start that needs it.
    """

    def __init__(self, provider: ContainerProvider, clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.clock = clock
        self.failures = 0  # in a row
        self.resting_until = 0.0
        self.last_error = ""
        self.total_failures = 0

    def usable(self, now: float | None = None) -> bool:
        return (self.clock() if now is None else now) >= self.resting_until

    def failed(self, error: BaseException) -> float:
        """Record a failed start; returns the seconds the provider now rests."""
        self.failures += 1
        self.total_failures += 1
        self.last_error = str(error) or type(error).__name__
        rest = min(self.provider.failure_backoff_max, self.provider.failure_backoff * 2 ** (self.failures - 1))
        self.resting_until = self.clock() + rest
        return rest

    def succeeded(self) -> None:
        self.failures = 0
        self.resting_until = 0.0

    def describe(self, now: float | None = None) -> str:
        left = self.resting_until - (self.clock() if now is None else now)
        return f"failing, resting {left:.1f}s more after {self.failures} failed starts: {self.last_error[:200]}"


class HealthMonitor:
    """Heartbeats the provisioner's containers and hands the ones that stopped answering back to it."""

    def __init__(
        self,
        slots: Mapping[str, Slot],
        on_lost: Callable[[Slot, str, str], Awaitable[None]],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        tick: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = slots
        self.clock = clock
        self.on_lost = on_lost  # (slot, reason GONE | UNRESPONSIVE, message)
        self.spawn = spawn
        self.tick = tick
        self.heartbeats = 0
        self.heartbeat_failures = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                self.check_once()
            except Exception:
                log.exception("health check failed")

    def check_once(self) -> None:
        """Start a heartbeat for each container whose turn it is (and that has none under way)."""
        now = self.clock()
        for slot in list(self.slots.values()):
            if slot.state not in PROBED or slot.endpoint is None or slot.probing or now < slot.next_probe:
                continue
            slot.probing = True
            slot.next_probe = now + slot.provider.heartbeat_interval
            self.spawn(self.probe(slot))

    async def probe(self, slot: Slot) -> None:
        try:
            await self._probe(slot)
        finally:
            slot.probing = False

    async def _probe(self, slot: Slot) -> None:
        provider = slot.provider
        assert slot.endpoint is not None
        self.heartbeats += 1
        try:
            answer: dict[str, Any] = await provider.heartbeat(slot.endpoint, slot.secret)
        except HEARTBEAT_ERRORS as error:
            problem = str(error) or type(error).__name__
        else:
            slot.last_heartbeat, slot.heartbeat_failures = utcnow(), 0
            slot.agent = answer
            broken = answer.get("problem")
            if isinstance(broken, str) and slot.state == ContainerState.IDLE and self.slots.get(slot.id) is slot:
                # Idle and broken by a run (no fork, disk or memory left): not handed to the next one.
                await self.on_lost(slot, BROKEN, f"container {slot.id} on {provider.name} is broken: {broken[:500]}")
            return
        self.heartbeat_failures += 1
        try:
            alive = await provider.alive(slot.id)
        except (ProviderError, OSError) as error:
            log.warning("provider %s cannot tell whether %s runs: %s", provider.name, slot.id, error)
            alive = True  # the engine's trouble is not the container's: count a plain failure
        if self.slots.get(slot.id) is not slot or slot.state not in PROBED:
            return  # retired or released meanwhile
        slot.heartbeat_failures += 1
        if not alive:
            await self.on_lost(
                slot, GONE, f"container {slot.id} on {provider.name} is gone (its agent did not answer: {problem})"
            )
        elif slot.heartbeat_failures >= provider.heartbeat_failures:
            await self.on_lost(
                slot,
                UNRESPONSIVE,
                f"container {slot.id} on {provider.name} stopped answering "
                f"heartbeats ({slot.heartbeat_failures} failed in a row, "
                f"last: {problem})",
            )
        else:
            log.info(
                "container %s missed heartbeat %d of %d: %s",
                slot.id,
                slot.heartbeat_failures,
                provider.heartbeat_failures,
                problem,
            )
