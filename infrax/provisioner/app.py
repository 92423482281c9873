"""The provisioner's REST API."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse
from pydantic import Field

from infrax.model import Container, ContainerType, OfferAnswer, PartitionOffer, WireModel
from infrax.provisioner.service import Provisioner
from infrax.web import add_error_handlers


class OfferBatch(WireModel):
    offers: list[PartitionOffer] = Field(min_length=1, max_length=1000)


class OfferAnswers(WireModel):
    answers: list[OfferAnswer]


class CancelRuns(WireModel):
    run_ids: list[str]


class Release(WireModel):
    run_id: str | None = None
    healthy: bool = True
    reason: str | None = None


def create_app(provisioner: Provisioner) -> FastAPI:
    app = FastAPI(title="infrax provisioner", version="1")
    add_error_handlers(app)

    @app.get("/api/v1/container-types", response_model=list[ContainerType])
    async def container_types() -> list[ContainerType]:
        return list(provisioner.types.values())

    @app.post("/api/v1/partitions", response_model=OfferAnswers)
    async def offer(batch: OfferBatch) -> OfferAnswers:
        """Accept or reject each offered partition run; an accepted one is ours to run."""
        return OfferAnswers(answers=provisioner.offer(batch.offers))

    @app.post("/api/v1/partitions/cancel")
    async def cancel(body: CancelRuns) -> dict[str, list[str]]:
        return {"forwarded": provisioner.cancel(body.run_ids)}

    @app.get("/api/v1/containers", response_model=list[Container])
    async def containers() -> list[Container]:
        return provisioner.containers()

    @app.post("/api/v1/containers/{container_id}/release", status_code=204)
    async def release(container_id: str, body: Release) -> None:
        if container_id not in provisioner.slots:
            raise HTTPException(404, f"no container {container_id}")
        await provisioner.release(container_id, body.run_id, body.healthy, body.reason)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> str:
        lines = ["# TYPE infrax_provisioner_partitions_total counter"]
        for outcome in ("accepted", "rejected"):
            lines.append(f'infrax_provisioner_partitions_total{{outcome="{outcome}"}} {provisioner.counters[outcome]}')
        lines.append("# TYPE infrax_provisioner_containers gauge")
        for view in provisioner.containers():
            lines.append(f'infrax_provisioner_containers{{type="{view.type}",state="{view.state}"}} 1')
        return "\n".join(lines) + "\n"

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
