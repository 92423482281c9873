"""The optimizer's REST API."""

from __future__ import annotations

from fastapi import FastAPI

from infrax.model import ExecutionPlan, PlanRequest
from infrax.optimizer.planner import Planner
from infrax.web import add_error_handlers


def create_app(planner: Planner) -> FastAPI:
    app = FastAPI(title="infrax optimizer", version="1")
    add_error_handlers(app)

    @app.post("/api/v1/plans", response_model=ExecutionPlan, response_model_by_alias=True)
    async def make_plan(request: PlanRequest) -> ExecutionPlan:
        return planner.plan(request)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
