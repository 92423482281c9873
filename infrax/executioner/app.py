"""The executioner's REST API."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException, Query, Response
from pydantic import Field

from infrax.auth import Security, route_options, secured_app
from infrax.bus.messages import RunStatus
from infrax.executioner.service import Executioner
from infrax.model import ExecutionAssignment, WireModel
from infrax.web import add_error_handlers


class AssignmentBatch(WireModel):
    assignments: list[ExecutionAssignment] = Field(min_length=1, max_length=1000)


class RunIds(WireModel):
    run_ids: list[str]


class RunView(WireModel):
    status: RunStatus
    log_path: str


def create_app(executioner: Executioner, security: Security) -> FastAPI:
    app = secured_app("infrax executioner", security)
    read = route_options("executioner:read", readable=True)
    add_error_handlers(app)

    @app.post("/api/v1/runs", status_code=202, **route_options("executioner:runs"))
    async def execute(batch: AssignmentBatch) -> dict[str, list[str]]:
        return {"started": await executioner.execute(batch.assignments)}

    @app.post("/api/v1/runs/cancel", **route_options("executioner:cancel"))
    async def cancel(body: RunIds) -> dict[str, list[str]]:
        return {"cancelled": await executioner.cancel(body.run_ids)}

    @app.get("/api/v1/runs/{run_id}", response_model=RunView, **read)
    async def get_run(run_id: str) -> RunView:
        found = await executioner.get_run(run_id)
        if found is None:
            raise HTTPException(404, f"no run {run_id}")
        return RunView(status=found[0], log_path=str(found[1]))

    @app.get("/api/v1/runs/{run_id}/log", **read)
    async def get_log(run_id: str, offset: int = Query(0, ge=0, le=2**62)) -> Response:
        """The run's log from byte `offset`; X-Log-Complete says whether more can come."""
        if offset < 0:
            raise HTTPException(400, "offset must be 0 or more")
        found = await executioner.get_run(run_id)
        if found is None:
            raise HTTPException(404, f"no run {run_id}")
        status, path = found
        content = await asyncio.to_thread(_read_from, path, offset)
        complete = status.state != "running"
        return Response(
            content,
            media_type="text/plain; charset=utf-8",
            headers={"X-Log-Complete": str(complete).lower(), "X-Log-Offset": str(offset + len(content))},
        )

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _read_from(path: object, offset: int) -> bytes:
    try:
        with open(path, "rb") as f:  # type: ignore[call-overload]
            f.seek(offset)
            return f.read()
    except FileNotFoundError:
        return b""
