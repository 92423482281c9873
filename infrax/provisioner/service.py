"""The provisioner: decides which container runs a partition, starts, watches and retires containers.

It answers an offer at once (accepted or rejected with a reason); starting a container and
handing the run to the executioner happen after the answer, off the scheduler's path.

Which container: an idle one of the type that may take the run (`tenancy`: its project and trust;
of the provider earliest in the type's list first),
else a new one from the first provider in the type's list that has room and is not resting after
failed starts. A start that fails puts that provider to rest (`health.ProviderHealth`) and the
partition moves on to the next provider; only when none is left is the run reported lost.
Containers are heartbeated (`health.HealthMonitor`); a lost one is destroyed, its run reported
lost (the scheduler re-queues it while retries last) and the warm pool refilled.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from prometheus_client import CollectorRegistry

from infrax.auth.runs import RunTokens
from infrax.background import BackgroundTasks
from infrax.bus import Bus, topics
from infrax.bus.messages import RunStatus
from infrax.executioner.client import ExecutionerClient, ExecutionerPool
from infrax.http import ServiceError, while_unavailable
from infrax.model import (
    Container,
    ContainerAccess,
    ContainerState,
    ContainerType,
    ExecutionAssignment,
    OfferAnswer,
    PartitionOffer,
    new_id,
    utcnow,
)
from infrax.provisioner.announcements import Announcements
from infrax.provisioner.health import HealthMonitor, ProviderHealth
from infrax.provisioner.metrics import ProvisionerCollector, start_histogram
from infrax.provisioner.providers import ContainerProvider, ProviderError
from infrax.provisioner.slots import LIVE, Slot, access_to, adopted_slots
from infrax.provisioner.tenancy import may_take, tenant_of
from infrax.retry import outage

log = logging.getLogger(__name__)


class Provisioner:
    def __init__(
        self,
        container_types: list[ContainerType],
        providers: list[ContainerProvider],
        executioner: ExecutionerClient | ExecutionerPool,
        bus: Bus,
        *,
        maintenance_interval: float = 0.5,
        health_tick: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        run_tokens: RunTokens | None = None,
        outage_deadline: float = 600.0,
    ) -> None:
        self.types = {t.name: t for t in container_types}
        self.providers = {p.name: p for p in providers}
        for t in container_types:
            missing = [p for p in t.providers if p not in self.providers]
            if missing:
                raise ValueError(f"container type {t.name} names unknown providers {missing}")
        self.executioner = executioner
        self.bus = bus
        self.maintenance_interval = maintenance_interval
        # Ages, idle times and rests are measured on this clock: tests move it instead of waiting.
        self.clock = clock
        self.run_tokens = run_tokens  # with keys: an offer is taken only with its run's own token
        # How long a run accepted for an unreachable executioner waits for it before it is lost.
        self.outage_deadline = outage_deadline
        self._executioner_outage = outage("the executioner")
        self.slots: dict[str, Slot] = {}
        self.runs: dict[str, str] = {}  # run id -> container id, while the run is ours
        self.cancelled: set[str] = set()
        self.counters: Counter[str] = Counter()
        self.offers: Counter[tuple[str, str]] = Counter()  # (type, accepted | rejected)
        self.rejections: Counter[tuple[str, str]] = Counter()  # (type, why)
        self.lost: Counter[tuple[str, str]] = Counter()  # (provider, gone | unresponsive)
        self.metrics = CollectorRegistry()
        self.metrics.register(ProvisionerCollector(self))
        self.start_seconds = start_histogram(self.metrics)
        self.provider_health = {name: ProviderHealth(p, clock) for name, p in self.providers.items()}
        self.health = HealthMonitor(self.slots, self._lose, self._spawn, tick=health_tick, clock=clock)
        self._background = BackgroundTasks()
        self.announcements = Announcements(bus, self._spawn)
        self._maintenance: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Adopt the healthy containers a previous provisioner left running (their runs go on),
        remove the rest, then keep the pools."""
        for provider in self.providers.values():
            ensure_image = getattr(provider, "ensure_image", None)
            if ensure_image is not None:  # building an image must not wait for the first partition
                await ensure_image()
            leaked = await provider.list()
            adopted = await self._adopt(provider, leaked)
            leaked = [c for c in leaked if c not in adopted]
            if adopted:
                log.warning("adopted %d containers of %s that a previous provisioner left", len(adopted), provider.name)
            if leaked:
                log.warning("removing %d leaked containers of %s", len(leaked), provider.name)
                await asyncio.gather(*(provider.destroy(c) for c in leaked), return_exceptions=True)
        self._maintenance = asyncio.create_task(self._maintain(), name="provisioner-maintenance")
        self._health = asyncio.create_task(self.health.run(), name="provisioner-health")

    async def _adopt(self, provider: ContainerProvider, found: list[str]) -> set[str]:
        """The containers among `found` whose agents answer with the secret derived for them."""
        if self.run_tokens is None or not found:
            return set()
        adopted = await adopted_slots(provider, found, self.types, self.run_tokens, self.clock)
        for slot in adopted:
            self.slots[slot.id] = slot
            if slot.adopted_run:
                self.runs[slot.adopted_run] = slot.id
        return {slot.id for slot in adopted}

    def access(self, run_ids: list[str]) -> list[ContainerAccess]:
        """How to reach the agents of these runs' containers (for an executioner that restarted)."""
        return access_to(self.slots.values(), run_ids)

    async def stop(self) -> None:
        for loop in (self._maintenance, self._health):
            if loop is not None:
                loop.cancel()
                await asyncio.gather(loop, return_exceptions=True)
        await self._background.cancel()
        await asyncio.gather(*(s.provider.destroy(s.id) for s in self.slots.values()), return_exceptions=True)
        for provider in self.providers.values():
            await provider.close()
        self.slots.clear()

    # -- offers -----------------------------------------------------------------------------

    def offer(self, offers: list[PartitionOffer]) -> list[OfferAnswer]:
        answers, ready = [], []
        for offer in offers:
            answer, slot = self._place(offer)
            answers.append(answer)
            outcome = "accepted" if answer.accepted else "rejected"
            self.counters[outcome] += 1
            self.offers[(offer.container_type, outcome)] += 1
            if slot is not None and slot.state == ContainerState.BUSY:
                ready.append(slot)
        if ready:
            self._spawn(self._hand_off(ready))
        return answers

    def _place(self, offer: PartitionOffer) -> tuple[OfferAnswer, Slot | None]:
        if offer.run_id in self.runs:  # a repeated offer (scheduler retry) is the same run
            return OfferAnswer(run_id=offer.run_id, accepted=True, reason="already accepted"), None
        if self.run_tokens is not None:
            claims = self.run_tokens.check(offer.run_token or "")
            if claims is None or (claims.run_id, claims.partition_id, claims.run) != (
                offer.run_id,
                offer.partition_id,
                offer.run,
            ):
                log.warning("refused an offer of run %s: its run token is not that run's", offer.run_id)
                return self._reject(offer, "run_token", "the offer's run token is not the token of that run")
        container_type = self.types.get(offer.container_type)
        if container_type is None:
            return self._reject(offer, "unknown_type", f"unknown container type {offer.container_type!r}")
        if self._executioner_outage.down:
            return self._reject(offer, "executioner_down", "the executioner is unreachable; offers wait for it")
        tenant = tenant_of(offer)
        idle = self._idle_slot(container_type, tenant, avoid=offer.avoid_container)
        if idle is not None:
            idle.state, idle.run, idle.tenant = ContainerState.BUSY, offer, tenant
            self.runs[offer.run_id] = idle.id
            return OfferAnswer(run_id=offer.run_id, accepted=True), idle
        live = [s for s in self.slots.values() if s.type.name == container_type.name and s.state in LIVE]
        if len(live) >= container_type.max_concurrent:
            # At the type's maximum, an idle container that may not take this run (another tenant's,
            # or the one where a re-run's failures happened) makes way for a fresh one.
            unusable = [s for s in live if s.state == ContainerState.IDLE]
            if unusable:
                giving_way = min(unusable, key=lambda s: s.idle_since)
                giving_way.state = ContainerState.STOPPING
                self._spawn(self._retire(giving_way))
                live.remove(giving_way)
        if len(live) >= container_type.max_concurrent:
            return self._reject(
                offer,
                "max_concurrent",
                f"container type {container_type.name} is at its maximum of {container_type.max_concurrent} containers",
            )
        provider = self._provider_with_room(container_type)
        if provider is None:
            return self._reject(
                offer,
                "providers_full",
                f"every provider of {container_type.name} is full or failing ({self._usage(container_type)})",
            )
        slot = self._new_slot(container_type, provider, offer)
        self.runs[offer.run_id] = slot.id
        return OfferAnswer(run_id=offer.run_id, accepted=True), slot

    def _reject(self, offer: PartitionOffer, why: str, reason: str) -> tuple[OfferAnswer, None]:
        self.rejections[(offer.container_type, why)] += 1
        return OfferAnswer(run_id=offer.run_id, accepted=False, reason=reason), None

    def _idle_slot(self, container_type: ContainerType, tenant: str, avoid: str | None = None) -> Slot | None:
        """An idle container of the type that may take a run of `tenant`, not `avoid`: one that ran
        the tenant's runs before a fresh one (its caches are warm), of the provider earliest in its
        list, then the one idle longest."""
        rank = {name: i for i, name in enumerate(container_type.providers)}
        idle = [
            s
            for s in self.slots.values()
            if s.type.name == container_type.name
            and s.state == ContainerState.IDLE
            and s.id != avoid
            and may_take(s.tenant, tenant)
            and not s.provider.draining(s.id)
        ]
        return min(
            idle,
            key=lambda s: (s.tenant is None, rank.get(s.provider.name, len(rank)), s.idle_since),
            default=None,
        )

    def used(self, provider: ContainerProvider) -> int:
        """Containers the provider holds now (starting, idle or busy), of every type."""
        return sum(1 for s in self.slots.values() if s.provider is provider and s.state in LIVE)

    def _provider_with_room(
        self, container_type: ContainerType, exclude: tuple[str, ...] = ()
    ) -> ContainerProvider | None:
        """The first provider of the type, in its priority order, with capacity left and not resting."""
        now = self.clock()
        for name in container_type.providers:
            provider = self.providers[name]
            if name in exclude or not self.provider_health[name].usable(now):
                continue
            if provider.capacity is None or self.used(provider) < provider.capacity:
                return provider
        return None

    def _usage(self, container_type: ContainerType) -> str:
        parts = []
        now = self.clock()
        for name in container_type.providers:
            provider, health = self.providers[name], self.provider_health[name]
            used = f"{self.used(provider)}/{provider.capacity if provider.capacity is not None else '∞'}"
            parts.append(f"{name}: {used}" + ("" if health.usable(now) else f", {health.describe(now)}"))
        return "; ".join(parts)

    def _new_slot(
        self, container_type: ContainerType, provider: ContainerProvider, offer: PartitionOffer | None
    ) -> Slot:
        now = self.clock()
        slot = Slot(
            id=f"{container_type.name}-{new_id()[:12]}",
            type=container_type,
            provider=provider,
            secret="",
            run=offer,
            created_at=now,
            idle_since=now,
            tenant=tenant_of(offer) if offer is not None else None,
        )
        slot.secret = self._secret_for(slot.id)
        self.slots[slot.id] = slot
        self._spawn(self._start_container(slot))
        return slot

    def _secret_for(self, container_id: str) -> str:
        # Derived where there are keys: a provisioner after this one can then adopt the container.
        if self.run_tokens is not None:
            return self.run_tokens.container_secret(container_id)
        return secrets.token_urlsafe(24)

    async def _start_container(self, slot: Slot) -> None:
        failures: list[str] = []
        tried: list[str] = []
        while True:
            started = time.perf_counter()
            try:
                slot.endpoint = await slot.provider.create(slot.id, slot.type, slot.secret)
                break
            except Exception as error:
                # Any failure, a provider's bug included, is a failed start: never a slot left starting.
                if not isinstance(error, (ProviderError, OSError)):
                    log.exception("provider %s failed unexpectedly starting %s", slot.provider.name, slot.id)
                rest = self.provider_health[slot.provider.name].failed(error)
                self.counters["start_failures"] += 1
                failures.append(f"{slot.provider.name}: {error}")
                tried.append(slot.provider.name)
                log.warning(
                    "container %s failed to start on %s (provider rests %.0fs): %s",
                    slot.id,
                    slot.provider.name,
                    rest,
                    error,
                )
            # A partition waiting for this container moves on to the next provider with room.
            following = None
            if slot.run is not None and slot.run.run_id not in self.cancelled:
                following = self._provider_with_room(slot.type, exclude=tuple(tried))
            if following is None:
                slot.state = ContainerState.DEAD
                self.slots.pop(slot.id, None)
                if slot.run is not None:
                    await self._report_lost(slot.run, slot, "container failed to start: " + "; ".join(failures))
                await self.announcements.event("lost", slot.type.name, slot.id)
                return
            self._move(slot, following)
        self.provider_health[slot.provider.name].succeeded()
        took = time.perf_counter() - started
        self.start_seconds.labels(slot.provider.name).observe(took)
        self.counters["containers_started"] += 1
        log.info(
            "container %s of %s started on %s in %.1f s%s (%d of the type live)",
            slot.id[:16],
            slot.type.name,
            slot.provider.name,
            took,
            f", for run {slot.run.run_id[:16]}" if slot.run is not None else "",
            sum(1 for other in self.slots.values() if other.type is slot.type and other.state in LIVE),
        )
        slot.next_probe = self.clock() + slot.provider.heartbeat_interval
        if self.slots.get(slot.id) is not slot:  # the provisioner stopped meanwhile
            return
        await self.announcements.event("started", slot.type.name, slot.id, start_seconds=round(took, 3))
        if slot.run is None or slot.run.run_id in self.cancelled:
            self._become_idle(slot)
            self.announcements.free(slot.type.name)
            return
        slot.state = ContainerState.BUSY
        await self._hand_off([slot])

    def _move(self, slot: Slot, provider: ContainerProvider) -> None:
        """Start the slot on another provider, under a new id (the failed one may linger a while)."""
        self.slots.pop(slot.id, None)
        slot.id, slot.provider = f"{slot.type.name}-{new_id()[:12]}", provider
        slot.secret = self._secret_for(slot.id)
        slot.created_at, slot.created_wall = self.clock(), utcnow()
        self.slots[slot.id] = slot
        if slot.run is not None:
            self.runs[slot.run.run_id] = slot.id

    async def _hand_off(self, slots: list[Slot]) -> None:
        assignments = [
            ExecutionAssignment(
                offer=s.run, container_id=s.id, host=s.endpoint.host, port=s.endpoint.port, secret=s.secret
            )
            for s in slots
            if s.run is not None and s.endpoint is not None
        ]
        try:
            # An executioner that is down or restarting is waited for (nothing is offered meanwhile:
            # see `capacity`); only one that refuses, or stays away past the deadline, loses them.
            await while_unavailable(
                lambda: self.executioner.execute(assignments), self.outage_deadline, self._executioner_outage
            )
        except ServiceError as error:
            log.warning("executioner did not take %d runs: %s", len(assignments), error)
            for slot in slots:
                if slot.run is not None:
                    await self._report_lost(slot.run, slot, f"executioner did not take the run: {error}")
                self._become_idle(slot)

    async def _report_lost(self, offer: PartitionOffer, slot: Slot, why: str) -> None:
        self.runs.pop(offer.run_id, None)
        status = RunStatus(
            run_id=offer.run_id,
            partition_id=offer.partition_id,
            task_id=offer.task_id,
            request_id=offer.request_id,
            job_id=offer.job_id,
            run=offer.run,
            container_type=offer.container_type,
            container_id=slot.id,
            state="exception",
            message=why,
        )
        await self.bus.publish(
            topics.RUNS,
            topics.routing_key(
                offer.job_id, offer.task_id, offer.partition_id, offer.run, offer.container_type, status.state
            ),
            status.wire(),
        )

    # -- release, cancel --------------------------------------------------------------------

    async def release(self, container_id: str, run_id: str | None, healthy: bool, reason: str | None = None) -> bool:
        """The executioner is done with a container: reuse it or retire it by the type's rules.

        False, and nothing done, when the container runs another run than `run_id`: only whoever
        runs a container's current run may hand it back."""
        slot = self.slots.get(container_id)
        current = None if slot is None else (slot.run.run_id if slot.run is not None else slot.adopted_run)
        if current is not None and current != run_id:
            log.warning("refused to release %s: it runs %s, not %s", container_id, current, run_id)
            return False
        if run_id:
            self.runs.pop(run_id, None)
            self.cancelled.discard(run_id)
        slot = self.slots.get(container_id)
        if slot is None or slot.state not in LIVE:
            return True  # already lost or being retired
        slot.run, slot.adopted_run = None, None
        slot.partitions_run += 1
        if healthy:
            # The agent just reported the run's end: as good as a heartbeat, and under load a container
            # that runs partition after partition then needs no probing at all.
            slot.last_heartbeat, slot.heartbeat_failures = utcnow(), 0
            slot.next_probe = max(slot.next_probe, self.clock() + slot.provider.heartbeat_interval)
        rules = slot.type
        worn_out = (
            rules.isolation == "run"
            or (rules.max_partitions is not None and slot.partitions_run >= rules.max_partitions)
            or (rules.max_age is not None and self.clock() - slot.created_at >= rules.max_age)
        )
        if not healthy or worn_out:
            if not healthy:
                log.warning("retiring container %s: %s", container_id, reason or "unhealthy")
            await self._retire(slot)
        else:
            self._become_idle(slot)
        self.announcements.free(slot.type.name)
        return True

    def cancel(self, run_ids: list[str]) -> list[str]:
        """Stop runs that were cancelled; returns those already with the executioner."""
        with_executioner = []
        for run_id in run_ids:
            container_id = self.runs.get(run_id)
            slot = self.slots.get(container_id) if container_id else None
            if slot is not None and slot.state == ContainerState.STARTING:
                self.cancelled.add(run_id)
            elif container_id is not None:
                with_executioner.append(run_id)
        if with_executioner:
            self._spawn(self._cancel_runs(with_executioner))
        return with_executioner

    async def _cancel_runs(self, run_ids: list[str]) -> None:
        try:
            await self.executioner.cancel(run_ids)
        except ServiceError as error:
            log.warning("could not cancel %s: %s", run_ids, error)

    def _become_idle(self, slot: Slot) -> None:
        slot.state, slot.run, slot.idle_since = ContainerState.IDLE, None, self.clock()
        slot.adopted_run = None

    async def _lose(self, slot: Slot, why: str, message: str) -> None:
        """A container the health checks found dead: report its run lost, destroy it; the pool refills."""
        if self.slots.get(slot.id) is not slot or slot.state not in LIVE:
            return
        log.warning("%s; destroying it", message)
        self.lost[(slot.provider.name, why)] += 1
        run = slot.run
        slot.state = ContainerState.STOPPING
        # Reported before the destroy: the executioner's own news of this run (its connection
        # breaks, or the agent ends the run as it stops) then comes second and is ignored.
        if run is not None and self.runs.get(run.run_id) == slot.id:
            await self._report_lost(run, slot, message)
        await self._retire(slot)
        await self.announcements.event("lost", slot.type.name, slot.id)  # the maintenance loop starts its replacement

    async def _retire(self, slot: Slot) -> None:
        slot.state = ContainerState.STOPPING
        try:
            await slot.provider.destroy(slot.id)
        except (ProviderError, OSError) as error:
            log.warning("could not destroy %s: %s", slot.id, error)
        slot.state = ContainerState.DEAD
        self.slots.pop(slot.id, None)

    # -- pools and health -------------------------------------------------------------------

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(self.maintenance_interval)
            try:
                await self.maintain_once()
            except Exception:
                log.exception("pool maintenance failed")

    async def maintain_once(self) -> None:
        now = self.clock()
        # Dead containers are the health monitor's: this keeps the pools' sizes and ages.
        for container_type in self.types.values():
            mine = [s for s in self.slots.values() if s.type.name == container_type.name]
            idle = sorted((s for s in mine if s.state == ContainerState.IDLE), key=lambda s: s.idle_since)
            spare = len(idle) - container_type.min_warm
            for slot in idle:
                if slot.state != ContainerState.IDLE:
                    continue  # taken or retired while we awaited
                too_old = container_type.max_age is not None and now - slot.created_at >= container_type.max_age
                drained = slot.provider.draining(slot.id)
                if too_old or drained or (spare > 0 and now - slot.idle_since >= container_type.idle_timeout):
                    spare -= 1
                    await self._retire(slot)
                    await self.announcements.event("stopped", slot.type.name, slot.id)
            mine = [s for s in self.slots.values() if s.type.name == container_type.name and s.state in LIVE]
            # An idle container bound to a tenant is warm for that tenant's runs; another tenant's run
            # replaces it when the type is at its maximum (`_place`).
            warm = sum(
                1
                for s in mine
                if s.state == ContainerState.IDLE or (s.state == ContainerState.STARTING and s.run is None)
            )
            while warm < container_type.min_warm and len(mine) < container_type.max_concurrent:
                provider = self._provider_with_room(container_type)
                if provider is None:
                    break
                mine.append(self._new_slot(container_type, provider, None))
                warm += 1

    def capacity(self) -> dict[str, int]:
        """How many more partitions each container type can take right now (none while the
        executioner is unreachable: what is accepted then could only wait for it)."""
        if self._executioner_outage.down:
            return {name: 0 for name in self.types}
        free = {}
        for container_type in self.types.values():
            mine = [s for s in self.slots.values() if s.type.name == container_type.name and s.state in LIVE]
            idle = sum(1 for s in mine if s.state == ContainerState.IDLE)
            room = container_type.max_concurrent - len(mine)
            startable = 0
            now = self.clock()
            for name in container_type.providers:
                provider = self.providers[name]
                if not self.provider_health[name].usable(now):
                    continue
                if provider.capacity is None:
                    startable = room
                    break
                startable += max(0, provider.capacity - self.used(provider))
            free[container_type.name] = idle + max(0, min(room, startable))
        return free

    def containers(self) -> list[Container]:
        now = self.clock()
        return [s.view(now) for s in self.slots.values()]

    def capacity_grew(self, provider_name: str) -> None:
        """A provider can start more containers than before (a worker joined its pool): the
        scheduler hears of it now, as of a freed container of each type it serves."""
        for container_type in self.types.values():
            if provider_name in container_type.providers:
                self.announcements.free(container_type.name)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        self._background.spawn(work)
