"""The optimizer's REST API."""

from __future__ import annotations

from fastapi import FastAPI, Response

from infrax.api_errors import add_error_handlers
from infrax.auth import Security, route_options, secured_app
from infrax.metrics import metrics_route
from infrax.model import ExecutionPlan, PlanRequest
from infrax.optimizer.container_starts import LearnedStart
from infrax.optimizer.history import FileRuntime
from infrax.optimizer.overheads import LearnedOverhead
from infrax.optimizer.service import OptimizerService


def create_app(service: OptimizerService, security: Security) -> FastAPI:
    app = secured_app("infrax optimizer", security)
    add_error_handlers(app)

    @app.post(
        "/api/v1/plans", response_model=ExecutionPlan, response_model_by_alias=True, **route_options("optimizer:plan")
    )
    async def make_plan(request: PlanRequest, explain: bool = False) -> Response:
        """The plan; with `explain=true` each task also says why, decision by decision."""
        # Encoded as the response model says, once, by whoever made the plan: FastAPI would
        # validate and encode a ten-thousand-partition plan again on the event loop.
        return Response(await service.plan_json(request, explain=explain), media_type="application/json")

    @app.get(
        "/api/v1/history",
        response_model=list[FileRuntime],
        response_model_by_alias=True,
        **route_options("optimizer:read", readable=True),
    )
    async def history(project: str, task: str, containerType: str | None = None) -> list[FileRuntime]:  # noqa: N803
        """What the optimizer learned of each file of one task."""
        return await service.file_history(project, task, containerType)

    @app.get(
        "/api/v1/overheads",
        response_model=list[LearnedOverhead],
        response_model_by_alias=True,
        **route_options("optimizer:read", readable=True),
    )
    async def overheads(project: str, task: str) -> list[LearnedOverhead]:
        """What the optimizer learned of one task's checkout and start, per container type."""
        return await service.overheads(project, task)

    @app.get(
        "/api/v1/container-starts",
        response_model=list[LearnedStart],
        response_model_by_alias=True,
        **route_options("optimizer:read", readable=True),
    )
    async def container_starts() -> list[LearnedStart]:
        """How long a container of each type took to start, as measured by the provisioner: the
        planner's per-partition overhead of the type (in place of its configured `overhead`)."""
        return await service.container_starts()

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    metrics_route(
        app,
        service.metrics.registry,
        route_options("optimizer:read", readable=True),
        description="planning times; the bus",
    )
    return app
