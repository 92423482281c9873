"""The job master's REST API."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from infrax.jobmaster.plugin import PushRejected
from infrax.jobmaster.service import JobMaster, JobNotFound
from infrax.model import Job, PushSubmission
from infrax.web import add_error_handlers


def create_app(jobmaster: JobMaster) -> FastAPI:
    app = FastAPI(title="infrax job master", version="1")
    add_error_handlers(app)

    @app.exception_handler(JobNotFound)
    async def not_found(_request: Request, error: JobNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(error)})

    @app.exception_handler(PushRejected)
    async def rejected(_request: Request, error: PushRejected) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(error)})

    @app.post("/api/v1/pushes", response_model=Job, status_code=201)
    async def push(submission: PushSubmission, response: Response) -> Job:
        job, created = await jobmaster.push(submission)
        if not created:
            response.status_code = 200
        return job

    @app.get("/api/v1/jobs", response_model=list[Job])
    async def list_jobs(project: str | None = None, revision: str | None = None) -> list[Job]:
        return await jobmaster.list(project, revision)

    @app.get("/api/v1/jobs/{job_id}", response_model=Job)
    async def get_job(job_id: str) -> Job:
        return await jobmaster.get(job_id)

    @app.post("/api/v1/jobs/{job_id}/cancel", response_model=Job)
    async def cancel_job(job_id: str) -> Job:
        return await jobmaster.cancel(job_id)

    @app.get("/api/v1/jobs/{job_id}/files/{path:path}")
    async def file_at_revision(job_id: str, path: str) -> Response:
        """A file of the job's revision: how agents fetch a bootstrapper kept in the repository."""
        content = await jobmaster.file_at_revision(job_id, path)
        if content is None:
            raise HTTPException(404, f"no file {path!r} at the revision of job {job_id}")
        return Response(content, media_type="application/octet-stream")

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
