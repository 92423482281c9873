"""The job master's REST API."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi import Path as FastAPIPath
from fastapi.responses import JSONResponse, StreamingResponse

from infrax.api_errors import add_error_handlers
from infrax.auth import Security, caller_of, require, route_options, secured_app
from infrax.auth.web import OpenReads
from infrax.http import ServiceError
from infrax.ids import ID_PREFIX
from infrax.jobmaster.actions import JobBusy
from infrax.jobmaster.github import WebhookError
from infrax.jobmaster.mirrors import MirrorError
from infrax.jobmaster.plugin import PushRejected
from infrax.jobmaster.pushlog import HgPushNotice, push_view
from infrax.jobmaster.queries import JobNotFound
from infrax.jobmaster.service import JobMaster
from infrax.jobmaster.vcs import VcsError
from infrax.metrics import metrics_route
from infrax.model import NO_CONTROL, CancelReason, Job, PushSubmission, State
from infrax.pagination import PageRequest, link_next, page_request
from infrax.treeherder.queue_api import inspect_router, queue_router


def create_app(jobmaster: JobMaster, security: Security) -> FastAPI:
    app = secured_app("infrax job master", security)
    app.add_middleware(OpenReads, prefixes=("/api/queue/v1/",))  # Treeherder's UI fetches from its own origin
    read = route_options("jobmaster:read", readable=True)
    add_error_handlers(app)

    @app.exception_handler(JobNotFound)
    async def not_found(_request: Request, error: JobNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(PushRejected)
    async def rejected(_request: Request, error: PushRejected) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.exception_handler(JobBusy)
    async def busy(_request: Request, error: JobBusy) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(error)})

    @app.exception_handler(WebhookError)
    async def webhook_refused(_request: Request, error: WebhookError) -> JSONResponse:
        return JSONResponse(status_code=error.status, content={"detail": error.detail})

    @app.exception_handler(MirrorError)
    async def unfetchable(_request: Request, error: MirrorError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": str(error)})

    @app.post("/api/v1/pushes", response_model=Job, status_code=201, **route_options("jobmaster:push:"))
    async def push(submission: PushSubmission, response: Response, request: Request) -> Job:
        """Test a revision: needs `jobmaster:push:<project>` of the project its configuration names."""
        caller = caller_of(request)
        job, created = await jobmaster.push(
            submission, authorize=lambda project: require(caller, f"jobmaster:push:{project}")
        )
        if not created:
            response.status_code = 200
        return job

    @app.get("/api/v1/jobs", response_model=list[Job], **read)
    async def list_jobs(
        request: Request,
        response: Response,
        project: str | None = None,
        revision: str | None = None,
        state: State | None = None,
        idPrefix: str | None = Query(None, pattern=ID_PREFIX.pattern, description="ids that start so"),  # noqa: N803
        page: PageRequest = Depends(page_request),
    ) -> list[Job]:
        """Newest first, a page at a time (`limit`, `after`; the next page's URL in `Link`)."""
        items, after = await jobmaster.list_jobs(project, revision, page, state=state, id_prefix=idPrefix)
        link_next(request, response, page, after)
        return items

    @app.get("/api/v1/jobs/{job_id}", response_model=Job, **read)
    async def get_job(job_id: str) -> Job:
        return await jobmaster.get(job_id)

    @app.post("/api/v1/jobs/{job_id}/cancel", response_model=Job, **route_options("jobmaster:cancel:"))
    async def cancel_job(job_id: str, request: Request, body: CancelReason | None = None) -> Job:
        """Needs `jobmaster:cancel:<project>` of the job's project; the reason, if given, is the job's message."""
        require(caller_of(request), f"jobmaster:cancel:{(await jobmaster.get(job_id)).project}")
        return await jobmaster.cancel(job_id, body.reason if body else None)

    @app.post("/api/v1/jobs/{job_id}/rerun", response_model=Job, **route_options("jobmaster:rerun:"))
    async def rerun_job(job_id: str, request: Request, failed: bool = False) -> Job:
        """Run an ended job again (409 while it runs): all of it as a new task request under the
        same job, or with `failed=true` only its failed partitions, each as its next run (409 when
        none failed). Needs `jobmaster:rerun:<project>` of the job's project."""
        require(caller_of(request), f"jobmaster:rerun:{(await jobmaster.get(job_id)).project}")
        try:
            return await jobmaster.rerun(job_id, failed_only=failed)
        except ServiceError as error:
            if error.status == 409:
                raise JobBusy(error.detail) from error
            raise

    @app.get("/api/v1/jobs/{job_id}/files/{path:path}", **route_options("jobmaster:read-files:"))
    async def file_at_revision(
        job_id: str, request: Request, path: str = FastAPIPath(max_length=4096, pattern=r"^[^\x00\r\n]+$")
    ) -> Response:
        """A file of the job's revision (how a bootstrapper kept in the repository is fetched): needs
        `jobmaster:read-files:<job id>`, which a run's own token holds for its job only."""
        require(caller_of(request), f"jobmaster:read-files:{job_id}")
        content = await jobmaster.file_at_revision(job_id, path)
        if content is None:
            raise HTTPException(404, f"no file {path!r} at the revision of job {job_id}")
        return Response(content, media_type="application/octet-stream")

    @app.get("/api/v1/jobs/{job_id}/source", **route_options("jobmaster:read-files:"))
    async def source_for_a_cache(
        job_id: str,
        request: Request,
        have: list[str] = Query([], max_length=50, description="revisions the cache holds (40 hex digits)"),
        depth: int | None = Query(None, ge=1, le=100_000, description="git: the revision's last N commits only"),
    ) -> Response:
        """What a container's cache holding `have` lacks to check out the job's revision: a git pack
        or an hg bundle (`X-Infrax-Vcs`), streamed; 204 when it lacks nothing. Needs
        `jobmaster:read-files:<job id>`."""
        require(caller_of(request), f"jobmaster:read-files:{job_id}")
        try:
            found = await jobmaster.source_pack(job_id, have, depth)
        except VcsError as error:
            raise HTTPException(409, f"the source of job {job_id} cannot be read: {error}") from None
        headers = {"X-Infrax-Vcs": found.vcs, "X-Infrax-Revision": found.revision}
        if found.shallow:
            headers["X-Infrax-Shallow"] = " ".join(found.shallow)
        if found.path is None:
            return Response(status_code=204, headers=headers)
        size = found.path.stat().st_size
        return StreamingResponse(
            found.chunks(), media_type="application/octet-stream", headers={**headers, "Content-Length": str(size)}
        )

    @app.post("/api/v1/github/webhook", status_code=202, **route_options(public=True))
    async def github_webhook(request: Request) -> JSONResponse:
        """A GitHub webhook delivery (see docs/code-hosts.md): signed, deduplicated by delivery id."""
        answer = await jobmaster.github.handle(request.headers, await request.body())
        return JSONResponse(status_code=answer.status, content=answer.body)

    @app.post("/api/v1/hg/pushes", status_code=201, **route_options("jobmaster:hg-push"))
    async def hg_push(notice: HgPushNotice, response: Response) -> dict[str, Any]:
        """What a changegroup hook reports: the push is recorded once and its tip run as a job."""
        row, created = await jobmaster.hg.notify(notice)
        if not created:
            response.status_code = 200
        return {**push_view(row), "created": created}

    @app.post("/api/v1/hg/poll", **route_options("jobmaster:hg-poll"))
    async def hg_poll() -> list[dict[str, Any]]:
        """Poll the configured Mercurial repositories now; the pushes found."""
        return [push_view(row) for row in await jobmaster.hg.poll_once()]

    @app.get("/api/v1/hg/json-pushes", **read)
    async def hg_json_pushes(
        repository: str = Query(
            min_length=1, max_length=1000, pattern=NO_CONTROL, description="the repository's path or URL"
        ),
        start_id: int | None = Query(None, alias="startID", ge=0, le=2**31),
        end_id: int | None = Query(None, alias="endID", ge=0, le=2**31),
        full: bool = False,
        version: int = Query(2, ge=2, le=2),
    ) -> dict[str, Any]:
        """The recorded pushes, as hg.mozilla.org's `json-pushes?version=2` shows them."""
        return await jobmaster.hg.json_pushes(repository, start_id, end_id, full)

    @app.get("/hg/{name}/json-pushes", **read)
    @app.get("/hg/{name}/json-pushes/", **read)
    async def hg_repository_json_pushes(
        name: str = FastAPIPath(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$"),
        start_id: int | None = Query(None, alias="startID", ge=0, le=2**31),
        end_id: int | None = Query(None, alias="endID", ge=0, le=2**31),
        changeset: str | None = Query(None, min_length=12, max_length=40, pattern=r"^[0-9a-f]+$"),
        full: bool = False,
        version: int = Query(2, ge=2, le=2),
    ) -> dict[str, Any]:
        """`<repository URL>/json-pushes/`, where Treeherder looks for a Mercurial repository's
        pushes, when that URL is `<public URL>/hg/<name>` (the repository's last path segment)."""
        repository = await jobmaster.hg.repository_named(name)
        if repository is None:
            raise HTTPException(404, f"no Mercurial repository named {name!r} (or more than one) has pushes here")
        return await jobmaster.hg.json_pushes(repository, start_id, end_id, full, changeset)

    app.include_router(queue_router(jobmaster))
    app.include_router(inspect_router(jobmaster))

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    metrics_route(
        app,
        jobmaster.metrics.registry,
        read,
        jobmaster.metrics.refresh,
        "pushes by outcome, jobs by state, job durations, the bus's counts",
    )
    return app
