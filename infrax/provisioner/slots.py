"""A container as the provisioner tracks it, and how it is adopted from a provisioner that stopped."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from infrax.auth.runs import RunTokens
from infrax.model import Container, ContainerAccess, ContainerState, ContainerType, PartitionOffer, utcnow
from infrax.provisioner.health import HEARTBEAT_ERRORS
from infrax.provisioner.providers import ContainerProvider, Endpoint
from infrax.provisioner.tenancy import UNKNOWN

log = logging.getLogger(__name__)

LIVE = (ContainerState.STARTING, ContainerState.IDLE, ContainerState.BUSY)


@dataclass
class Slot:
    """A container as the provisioner tracks it."""

    id: str
    type: ContainerType
    provider: ContainerProvider
    secret: str
    state: ContainerState = ContainerState.STARTING
    endpoint: Endpoint | None = None
    run: PartitionOffer | None = None
    partitions_run: int = 0
    created_at: float = 0.0  # on the provisioner's clock
    created_wall: datetime = field(default_factory=utcnow)
    idle_since: float = 0.0
    # Health: the health monitor's bookkeeping.
    last_heartbeat: datetime | None = None
    heartbeat_failures: int = 0
    next_probe: float = 0.0
    probing: bool = False
    agent: dict[str, Any] = field(default_factory=dict)  # its last heartbeat answer
    # Adopted from a provisioner that stopped, busy with a run known only by its id.
    adopted_run: str | None = None
    tenant: str | None = None  # whose runs it takes (tenancy): bound by its first run

    def view(self, now: float) -> Container:
        return Container(
            id=self.id,
            type=self.type.name,
            provider=self.provider.name,
            host=self.endpoint.host if self.endpoint else "",
            port=self.endpoint.port if self.endpoint else 0,
            state=self.state,
            partitions_run=self.partitions_run,
            created_at=self.created_wall,
            current_run=self.run.run_id if self.run else None,
            age=round(now - self.created_at, 3),
            last_heartbeat=self.last_heartbeat,
            heartbeat_failures=self.heartbeat_failures,
            tenant=None if self.tenant == UNKNOWN else self.tenant,
        )


async def adopted_slots(
    provider: ContainerProvider,
    found: list[str],
    types: dict[str, ContainerType],
    run_tokens: RunTokens,
    clock: Callable[[], float],
) -> list[Slot]:
    """The containers among `found` whose agents answer with the secret derived for them, as
    slots: busy with the run their agent says it runs, taking no run of anybody's after it (who ran
    there before is not known)."""
    adopted = []
    for container_id, type_name, endpoint in await provider.adoptable():
        container_type = types.get(type_name)
        if container_id not in found or container_type is None or provider.name not in container_type.providers:
            continue
        secret = run_tokens.container_secret(container_id)
        try:
            answer = await provider.heartbeat(endpoint, secret)
        except HEARTBEAT_ERRORS as error:
            log.info("not adopting %s: its agent does not answer (%s)", container_id, error)
            continue
        now = clock()
        run_id = answer.get("runId") if answer.get("busy") else None
        adopted.append(
            Slot(
                id=container_id,
                type=container_type,
                provider=provider,
                secret=secret,
                state=ContainerState.BUSY if run_id else ContainerState.IDLE,
                endpoint=endpoint,
                created_at=now,
                idle_since=now,
                last_heartbeat=utcnow(),
                next_probe=now + provider.heartbeat_interval,
                agent=answer,
                adopted_run=run_id,
                tenant=UNKNOWN,
            )
        )
    return adopted


def access_to(slots: Iterable[Slot], run_ids: list[str]) -> list[ContainerAccess]:
    """How to reach the agents of these runs' containers (for an executioner that restarted)."""
    wanted = set(run_ids)
    found = []
    for slot in slots:
        run_id = slot.run.run_id if slot.run is not None else slot.adopted_run
        if run_id in wanted and slot.endpoint is not None and slot.state in LIVE:
            found.append(
                ContainerAccess(
                    run_id=run_id,
                    container_id=slot.id,
                    host=slot.endpoint.host,
                    port=slot.endpoint.port,
                    secret=slot.secret,
                )
            )
    return found
