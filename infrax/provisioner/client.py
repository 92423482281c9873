"""How other components call the provisioner."""

from __future__ import annotations

from infrax.http import ServiceClient
from infrax.model import ContainerAccess, ContainerType, OfferAnswer, PartitionOffer, Release


class ProvisionerClient(ServiceClient):
    service = "provisioner"

    async def container_types(self) -> list[ContainerType]:
        return [ContainerType.model_validate(t) for t in await self.call("GET", "/api/v1/container-types")]

    async def capacity(self) -> dict[str, int]:
        return (await self.call("GET", "/api/v1/capacity"))["free"]

    async def offer(self, offers: list[PartitionOffer]) -> list[OfferAnswer]:
        body = await self.call("POST", "/api/v1/partitions", json={"offers": [o.wire() for o in offers]})
        return [OfferAnswer.model_validate(a) for a in body["answers"]]

    async def cancel(self, run_ids: list[str]) -> None:
        await self.call("POST", "/api/v1/partitions/cancel", json={"runIds": run_ids})

    async def release_many(self, releases: list[Release]) -> None:
        await self.call("POST", "/api/v1/containers/release", json={"releases": [r.wire() for r in releases]})

    async def release(self, container_id: str, run_id: str | None, healthy: bool, reason: str | None = None) -> None:
        await self.call(
            "POST",
            f"/api/v1/containers/{container_id}/release",
            json={"runId": run_id, "healthy": healthy, "reason": reason},
        )

    async def access(self, run_ids: list[str]) -> list[ContainerAccess]:
        """The containers that run these runs, with their agents' addresses and secrets."""
        body = await self.call("POST", "/api/v1/containers/access", json={"runIds": run_ids})
        return [ContainerAccess.model_validate(a) for a in body["containers"]]
