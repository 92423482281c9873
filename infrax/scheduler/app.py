"""The scheduler's REST API."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from infrax.auth import Security, caller_of, require, route_options, secured_app
from infrax.model import Task, TaskPartition, TaskRequest, TaskRequestSubmission
from infrax.scheduler.queries import NotFound
from infrax.scheduler.service import Rejected, Scheduler
from infrax.web import add_error_handlers


def create_app(scheduler: Scheduler, security: Security) -> FastAPI:
    app = secured_app("infrax scheduler", security)
    read = route_options("scheduler:read", readable=True)
    add_error_handlers(app)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(Rejected)
    async def rejected(_request: Request, error: Rejected) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.post(
        "/api/v1/task-requests",
        status_code=201,
        response_model=TaskRequest,
        **route_options("scheduler:create-task-request:"),
    )
    async def submit(submission: TaskRequestSubmission, request: Request) -> TaskRequest:
        """A task request of a project: needs `scheduler:create-task-request:<project>`."""
        require(caller_of(request), f"scheduler:create-task-request:{submission.project}")
        if submission.trusted:  # its runs would get the project's secrets
            require(caller_of(request), f"scheduler:trusted:{submission.project}")
        return await scheduler.submit(submission)

    @app.get("/api/v1/task-requests", response_model=list[TaskRequest], **read)
    async def list_requests(jobId: str | None = None, state: str | None = None) -> list[TaskRequest]:  # noqa: N803
        return await scheduler.list_requests(job_id=jobId, state=state)

    @app.get("/api/v1/task-requests/{request_id}", response_model=TaskRequest, **read)
    async def get_request(request_id: str) -> TaskRequest:
        return await scheduler.get_request(request_id)

    @app.post(
        "/api/v1/task-requests/{request_id}/cancel", response_model=TaskRequest, **route_options("scheduler:cancel:")
    )
    async def cancel_request(request_id: str, request: Request) -> TaskRequest:
        """Needs `scheduler:cancel:<project>` of the request's project."""
        found = await scheduler.get_request(request_id)
        require(caller_of(request), f"scheduler:cancel:{found.project}")
        return await scheduler.cancel_request(request_id)

    @app.post("/api/v1/jobs/{job_id}/cancel", **route_options("scheduler:cancel:"))
    async def cancel_job(job_id: str, request: Request) -> dict[str, list[str]]:
        """Every request of a job: needs `scheduler:cancel:<project>` of each."""
        for project in {r.project for r in await scheduler.list_requests(job_id=job_id)}:
            require(caller_of(request), f"scheduler:cancel:{project}")
        return {"cancelledRequests": await scheduler.cancel_job(job_id)}

    @app.get("/api/v1/tasks/{task_id}", response_model=Task, **read)
    async def get_task(task_id: str) -> Task:
        return await scheduler.get_task(task_id)

    @app.get("/api/v1/partitions", response_model=list[TaskPartition], **read)
    async def list_partitions(requestId: str | None = None, state: str | None = None) -> list[TaskPartition]:  # noqa: N803
        if not requestId and not state:
            raise HTTPException(400, "give requestId or state to list partitions")
        return await scheduler.list_partitions(request_id=requestId, state=state)

    @app.get("/api/v1/partitions/{partition_id}", response_model=TaskPartition, **read)
    async def get_partition(partition_id: str) -> TaskPartition:
        return await scheduler.get_partition(partition_id)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
