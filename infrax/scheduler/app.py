"""The scheduler's REST API."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse

from infrax.api_errors import add_error_handlers
from infrax.auth import Security, caller_of, require, route_options, secured_app
from infrax.ids import ID_PREFIX
from infrax.metrics import metrics_route
from infrax.model import CancelReason, Task, TaskPartition, TaskRequest, TaskRequestSubmission
from infrax.pagination import PageRequest, link_next, page_request
from infrax.scheduler.queries import NotFound
from infrax.scheduler.reruns import NothingToRerun
from infrax.scheduler.service import Rejected, Scheduler
from infrax.scheduler.summaries import RequestSummary, SummariesQuery, summaries_json


def create_app(scheduler: Scheduler, security: Security) -> FastAPI:
    app = secured_app("infrax scheduler", security)
    read = route_options("scheduler:read", readable=True)
    add_error_handlers(app)

    @app.exception_handler(NotFound)
    async def not_found(_request: Request, error: NotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(NothingToRerun)
    async def nothing_to_rerun(_request: Request, error: NothingToRerun) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(error)})

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
        """A task request of a project: needs `scheduler:create-task-request:<project>`; one that
        names a job (the job master's), `scheduler:attach-job:<project>` too, and the job's project."""
        caller = caller_of(request)
        require(caller, f"scheduler:create-task-request:{submission.project}")
        if submission.trusted:  # its runs would get the project's secrets
            require(caller, f"scheduler:trusted:{submission.project}")
        if submission.job_id is not None:
            # A job's requests are what its job master made: their runs read the job's files, and a
            # re-run of the job runs them again.
            require(caller, f"scheduler:attach-job:{submission.project}")
            others = await scheduler.job_projects(submission.job_id) - {submission.project}
            if others:
                raise HTTPException(
                    403, f"job {submission.job_id} belongs to project {sorted(others)[0]}, not {submission.project}"
                )
        return await scheduler.submit(submission)

    @app.get("/api/v1/task-requests", response_model=list[TaskRequest], **read)
    async def list_requests(
        request: Request,
        response: Response,
        jobId: str | None = None,  # noqa: N803
        state: str | None = None,
        page: PageRequest = Depends(page_request),
    ) -> list[TaskRequest]:
        """Newest first, a page at a time (`limit`, `after`; the next page's URL in `Link`)."""
        items, after = await scheduler.list_requests(job_id=jobId, state=state, page=page)
        link_next(request, response, page, after)
        return items

    @app.get("/api/v1/task-requests/{request_id}", response_model=TaskRequest, **read)
    async def get_request(request_id: str) -> Response:
        """With each queued partition's place in the queue and expected start and end."""
        found = await scheduler.get_request(request_id)
        await scheduler.with_queue_places([p for t in found.tasks for p in t.partitions])
        return _as_json(found)

    @app.post(
        "/api/v1/task-requests/{request_id}/cancel", response_model=TaskRequest, **route_options("scheduler:cancel:")
    )
    async def cancel_request(request_id: str, request: Request) -> Response:
        """Needs `scheduler:cancel:<project>` of the request's project."""
        require(caller_of(request), f"scheduler:cancel:{await scheduler.request_project(request_id)}")
        return _as_json(await scheduler.cancel_request(request_id))

    @app.post(
        "/api/v1/task-requests/{request_id}/rerun-failed",
        response_model=TaskRequest,
        **route_options("scheduler:rerun:"),
    )
    async def rerun_failed(request_id: str, request: Request) -> Response:
        """Its `failed` and `exception` partitions queued again, each as its next run (409 when it has
        none); needs `scheduler:rerun:<project>` of the request's project."""
        require(caller_of(request), f"scheduler:rerun:{await scheduler.request_project(request_id)}")
        return _as_json(await scheduler.rerun_failed(request_id))

    @app.post("/api/v1/jobs/{job_id}/cancel", **route_options("scheduler:cancel:"))
    async def cancel_job(job_id: str, request: Request, body: CancelReason | None = None) -> dict[str, list[str]]:
        """Every request of a job: needs `scheduler:cancel:<project>` of each. The reason, if given,
        is each cancelled partition's, task's and request's message."""
        for project in {r.project for r in (await scheduler.list_requests(job_id=job_id))[0]}:
            require(caller_of(request), f"scheduler:cancel:{project}")
        return {"cancelledRequests": await scheduler.cancel_job(job_id, body.reason if body else None)}

    metrics_route(
        app,
        scheduler.metrics.registry,
        read,
        scheduler.metrics.refresh,
        "queued partitions by priority, partitions by state, dispatch latency, the bus's counts",
    )

    @app.post(
        "/api/v1/task-request-summaries",
        response_model=dict[str, RequestSummary],
        response_model_by_alias=True,
        **read,
    )
    async def request_summaries(query: SummariesQuery) -> Response:
        """Up to 1,000 requests at a glance (a read, so `scheduler:read`): each task's state and its
        partitions' chunk numbers, states and runs; requests it does not know are left out."""
        return Response(await summaries_json(scheduler.db, query.request_ids), media_type="application/json")

    @app.get("/api/v1/tasks/{task_id}", response_model=Task, **read)
    async def get_task(task_id: str) -> Task:
        return await scheduler.get_task(task_id)

    @app.get("/api/v1/partitions", response_model=list[TaskPartition], **read)
    async def list_partitions(
        request: Request,
        response: Response,
        requestId: str | None = None,  # noqa: N803
        state: str | None = None,
        idPrefix: str | None = Query(None, pattern=ID_PREFIX.pattern, description="ids that start so"),  # noqa: N803
        page: PageRequest = Depends(page_request),
    ) -> list[TaskPartition]:
        """In queue order, a page at a time (`limit`, `after`; the next page's URL in `Link`)."""
        items, after = await scheduler.list_partitions(request_id=requestId, state=state, page=page, id_prefix=idPrefix)
        link_next(request, response, page, after)
        return items

    @app.get("/api/v1/partition-counts", **read)
    async def partition_counts(requestId: str | None = None) -> dict[str, int]:  # noqa: N803
        """How many partitions are in each state, of one request or of all (an aggregate query)."""
        return await scheduler.count_partitions(request_id=requestId)

    @app.get("/api/v1/partitions/{partition_id}", response_model=TaskPartition, **read)
    async def get_partition(partition_id: str) -> TaskPartition:
        """Queued, with its place in the queue and its expected start and end."""
        found = await scheduler.get_partition(partition_id)
        await scheduler.with_queue_places([found])
        return found

    @app.get("/api/v1/queue", **read)
    async def queue() -> dict[str, Any]:
        """Per container type: its capacity, what is queued and running (by project, with each
        project's weight and share of the running containers) and the oldest queued wait."""
        return {"containerTypes": await scheduler.queue_summary()}

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _as_json(request: TaskRequest) -> Response:
    """A request as its response model says, encoded once: FastAPI would check the model it is
    again, and a request of ten thousand partitions is 50 ms of that on the event loop."""
    return Response(request.model_dump_json(by_alias=True), media_type="application/json")
