"""A pool of workers as a container provider (`kind: pool`): its capacity is what its connected
workers offer (none while none is), a container is started on the worker with the most room, and
its agent is reached at the container's relay address on the provisioner's host.

    providers:
      - name: hardware              # the pool's name unless `options.pool` gives another
        kind: pool
        capacity: 200               # optional: at most this many at once, whatever joins
        options: {start_timeout: 30}
"""

from __future__ import annotations

from typing import Any

from infrax.fleet.gateway import Gateway
from infrax.fleet.links import NoRoom, WorkerCallFailed
from infrax.model import ContainerType
from infrax.provisioner.providers.base import ContainerProvider, Endpoint, ProviderError


class PoolProvider(ContainerProvider):
    kind = "pool"

    def __init__(self, name: str, capacity: int | None, options: dict[str, Any], gateway: Gateway) -> None:
        self.gateway = gateway
        super().__init__(name, capacity, options)
        self.pool = str(self.options.get("pool", name))
        self.start_timeout = float(self.options.get("start_timeout", 30.0))
        self._answers: dict[str, dict[str, Any]] = {}  # each container's agent's last heartbeat

    @property
    def capacity(self) -> int | None:
        """What the connected workers offer now, within the configured limit."""
        offered = self.gateway.capacity(self.pool)
        return offered if self._limit is None else min(offered, self._limit)

    @capacity.setter
    def capacity(self, limit: int | None) -> None:
        self._limit = limit

    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Endpoint:
        params = {"containerType": container_type.wire(), "secret": secret}
        try:
            host, port = await self.gateway.start_container(self.pool, container_id, params, self.start_timeout)
        except (NoRoom, WorkerCallFailed, ConnectionError, TimeoutError) as error:
            raise ProviderError(f"pool {self.pool}: {error or 'the worker did not answer in time'}") from error
        return Endpoint(host, port)

    async def heartbeat(self, endpoint: Endpoint, secret: str) -> dict[str, Any]:
        """Through the relay while the container's worker is there; while it is away within the
        grace, the agent's last answer (nothing is known to have changed, and a heartbeat would only
        wait on the dead link); past the grace, a failure (and `alive` says it is gone)."""
        container_id = self.gateway.container_at(endpoint.port)
        link = self.gateway.link_of(container_id) if container_id else None
        if container_id is None or link is None:
            raise ConnectionError(f"no container of pool {self.pool} at relay port {endpoint.port}")
        if self.gateway.present(link):
            answer = await super().heartbeat(endpoint, secret)
            self._answers[container_id] = answer
            return answer
        if self.gateway.away_for(link) < self.gateway.grace:
            return self._answers.get(container_id, {})
        raise ConnectionError(f"worker {link.name} has been away for more than {self.gateway.grace:.0f} s")

    async def alive(self, container_id: str) -> bool:
        return self.gateway.alive(container_id)

    async def destroy(self, container_id: str) -> None:
        self._answers.pop(container_id, None)
        await self.gateway.stop_container(container_id, self.start_timeout)

    def draining(self, container_id: str) -> bool:
        return self.gateway.draining(container_id)

    async def list(self) -> list[str]:
        return self.gateway.container_ids(self.pool)
