"""The provisioner's REST API."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request, Response
from pydantic import Field
from starlette.routing import WebSocketRoute

from infrax.api_errors import add_error_handlers
from infrax.auth import Security, route_options, secured_app
from infrax.fleet.gateway import Gateway
from infrax.fleet.links import UnknownWorker, WorkerBusy
from infrax.fleet.metrics import WorkerCollector
from infrax.metrics import metrics_route
from infrax.model import (
    Container,
    ContainerAccess,
    ContainerState,
    ContainerType,
    OfferAnswer,
    PartitionOffer,
    Release,
    WireModel,
)
from infrax.pagination import PageRequest, link_next, page_request, split
from infrax.provisioner.service import Provisioner


class OfferBatch(WireModel):
    offers: list[PartitionOffer] = Field(min_length=1, max_length=1000)


class OfferAnswers(WireModel):
    answers: list[OfferAnswer]


class CancelRuns(WireModel):
    run_ids: list[str]


class AccessRequest(WireModel):
    run_ids: list[str] = Field(min_length=1, max_length=10_000)


class AccessAnswer(WireModel):
    containers: list[ContainerAccess]


class ReleaseOne(WireModel):
    run_id: str | None = None
    healthy: bool = True
    reason: str | None = None


class ReleaseBatch(WireModel):
    releases: list[Release] = Field(min_length=1, max_length=1000)


def create_app(provisioner: Provisioner, security: Security, gateway: Gateway | None = None) -> FastAPI:
    app = secured_app("infrax provisioner", security)
    read = route_options("provisioner:read", readable=True)
    add_error_handlers(app)
    if gateway is not None:
        # A worker's connection checks its pool token itself (the route guard speaks HTTP only).
        app.router.routes.append(WebSocketRoute("/api/v1/workers/connect", gateway.serve))
        provisioner.metrics.register(WorkerCollector(gateway))

        @app.get("/api/v1/workers", **read)
        async def workers() -> list[dict[str, Any]]:
            """Every worker that joined a pool: connected or away, capacity, containers, the runs
            they hold now, last seen."""
            running = Counter(
                link.id
                for slot in provisioner.slots.values()
                if slot.state == ContainerState.BUSY and (link := gateway.link_of(slot.id)) is not None
            )
            return [{**shown, "runs": running[shown["id"]]} for shown in gateway.listing()]

        manage = route_options("provisioner:workers")

        @app.post("/api/v1/workers/{worker_id}/drain", **manage)
        async def drain_worker(worker_id: str) -> dict[str, Any]:
            """It takes no new partition; what it runs finishes; its containers go once idle."""
            try:
                return gateway.view(await gateway.drain(worker_id))
            except UnknownWorker as error:
                raise HTTPException(404, str(error)) from None

        @app.delete("/api/v1/workers/{worker_id}", status_code=204, **manage)
        async def remove_worker(worker_id: str) -> Response:
            """Forget a worker that runs nothing (409 while it has containers: drain it first)."""
            try:
                await gateway.remove(worker_id)
            except UnknownWorker as error:
                raise HTTPException(404, str(error)) from None
            except WorkerBusy as error:
                raise HTTPException(409, str(error)) from None
            return Response(status_code=204)

    @app.get("/api/v1/container-types", response_model=list[ContainerType], **read)
    async def container_types() -> list[ContainerType]:
        return list(provisioner.types.values())

    @app.get("/api/v1/capacity", **read)
    async def capacity() -> dict[str, dict[str, int]]:
        """Partitions each container type can take now: a hint, an offer may still be rejected."""
        return {"free": provisioner.capacity()}

    @app.post("/api/v1/partitions", response_model=OfferAnswers, **route_options("provisioner:offer"))
    async def offer(batch: OfferBatch) -> OfferAnswers:
        """Accept or reject each offered partition run; an accepted one is ours to run."""
        return OfferAnswers(answers=provisioner.offer(batch.offers))

    @app.post("/api/v1/partitions/cancel", **route_options("provisioner:cancel"))
    async def cancel(body: CancelRuns) -> dict[str, list[str]]:
        return {"forwarded": provisioner.cancel(body.run_ids)}

    @app.get("/api/v1/containers", response_model=list[Container], **read)
    async def containers(
        request: Request, response: Response, page: PageRequest = Depends(page_request)
    ) -> list[Container]:
        """The containers by id, a page at a time: type, provider, state, current run, age and last heartbeat."""
        after = None if page.after is None else str(page.after[0])
        listed = sorted((c for c in provisioner.containers() if after is None or c.id > after), key=lambda c: c.id)
        items, next_key = split(listed[: page.limit + 1], page, lambda c: (c.id,))
        link_next(request, response, page, next_key)
        return items

    @app.post("/api/v1/containers/{container_id}/release", status_code=204, **route_options("provisioner:release"))
    async def release(container_id: str, body: ReleaseOne) -> None:
        if container_id not in provisioner.slots:
            raise HTTPException(404, f"no container {container_id}")
        if not await provisioner.release(container_id, body.run_id, body.healthy, body.reason):
            raise HTTPException(409, f"container {container_id} runs another run than {body.run_id!r}")

    @app.post("/api/v1/containers/release", status_code=204, **route_options("provisioner:release"))
    async def release_many(body: ReleaseBatch) -> None:
        """Containers the executioner is done with; unknown ones (already retired) are skipped."""
        for item in body.releases:
            await provisioner.release(item.container_id, item.run_id, item.healthy, item.reason)

    @app.post("/api/v1/containers/access", response_model=AccessAnswer, **route_options("provisioner:access"))
    async def access(body: AccessRequest) -> AccessAnswer:
        """Address and secret of the container running each of these runs (those it knows): for an
        executioner that restarted and re-attaches to its runs. The executioner's scope only."""
        return AccessAnswer(containers=provisioner.access(body.run_ids))

    metrics_route(
        app,
        provisioner.metrics,
        read,
        description="containers by type, provider and state; offers; start times; health",
    )

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
