"""The executioner's REST API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from infrax.api_errors import add_error_handlers
from infrax.artifacts import Artifact, ArtifactNotFound
from infrax.auth import Security, route_options, secured_app
from infrax.auth.web import OpenReads
from infrax.bus.messages import RunStatus
from infrax.executioner.artifacts import LOG_ARTIFACT, file_chunks
from infrax.executioner.service import Executioner
from infrax.executioner.test_results import TestHistory, TestResultView, TestVerdict
from infrax.metrics import metrics_route
from infrax.model import ExecutionAssignment, WireModel, utcnow
from infrax.pagination import PageRequest, link_next, page_request, split


class AssignmentBatch(WireModel):
    assignments: list[ExecutionAssignment] = Field(min_length=1, max_length=1000)


class RunIds(WireModel):
    run_ids: list[str]


class RunView(WireModel):
    status: RunStatus
    log_path: str


class ArtifactView(WireModel):
    """What a run left (or its log, `infrax/log.txt`): download it from `url`."""

    name: str
    size: int
    content_type: str
    sha256: str
    created_at: datetime
    expires_at: datetime
    url: str


# Artifacts are the task's bytes, served from an infrax origin: a page among them runs sandboxed
# (no scripts, no same-origin), and a browser takes the declared type as it is.
ARTIFACT_HEADERS = {"Content-Security-Policy": "sandbox; default-src 'none'", "X-Content-Type-Options": "nosniff"}


def create_app(executioner: Executioner, security: Security) -> FastAPI:
    app = secured_app("infrax executioner", security)
    # Logs and artifacts, which Treeherder's log viewer and artifact list fetch from its own origin.
    app.add_middleware(OpenReads, prefixes=("/api/v1/runs/", "/api/v1/partitions/"))
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
    async def get_log(
        run_id: str,
        offset: int = Query(0, ge=0, le=2**62),
        limit: int | None = Query(None, ge=1, le=16 * 2**20, description="at most this many bytes"),
    ) -> Response:
        """The run's log from byte `offset` (at most `limit` bytes); X-Log-Complete says whether
        more can come, X-Log-Offset where the next read starts."""
        if offset < 0:
            raise HTTPException(400, "offset must be 0 or more")
        found = await executioner.get_run(run_id)
        if found is None:
            raise HTTPException(404, f"no run {run_id}")
        status, path = found
        content, size = await asyncio.to_thread(_read_from, path, offset, limit)
        complete = status.state != "running" and offset + len(content) >= size
        return Response(
            content,
            media_type="text/plain; charset=utf-8",
            headers={"X-Log-Complete": str(complete).lower(), "X-Log-Offset": str(offset + len(content))},
        )

    async def run_of(partition_id: str, run: int | None) -> str:
        run_id = await executioner.run_id_of(partition_id, run)
        if run_id is None:
            raise HTTPException(404, f"no run {'' if run is None else f'{run} '}of partition {partition_id} here")
        return run_id

    def listing(
        run_id: str, artifacts: list[Artifact], base: str, request: Request, response: Response, page: PageRequest
    ) -> list[ArtifactView]:
        after = str(page.after[0]) if page.after else None
        names = [a for a in artifacts if after is None or a.name > after]
        shown = names[: page.limit]
        link_next(request, response, page, [shown[-1].name] if len(names) > page.limit else None)
        return [
            ArtifactView(
                name=a.name,
                size=a.size,
                content_type=a.content_type,
                sha256=a.sha256,
                created_at=a.created_at,
                expires_at=a.expires_at,
                url=f"{executioner.public_url}{base}/{a.name}",
            )
            for a in shown
        ]

    async def with_log(run_id: str) -> list[Artifact]:
        found = await executioner.artifacts.store.list(run_id)
        stored = await executioner.get_run(run_id)
        log = executioner.artifacts.log_artifact(run_id, stored[1]) if stored is not None else None
        return sorted([*found, *([log] if log else [])], key=lambda a: a.name)

    async def download(run_id: str, name: str) -> StreamingResponse:
        if name == LOG_ARTIFACT:
            stored = await executioner.get_run(run_id)
            log = executioner.artifacts.log_artifact(run_id, stored[1]) if stored is not None else None
            if stored is None or log is None:
                raise HTTPException(404, f"run {run_id} has no log")
            return StreamingResponse(file_chunks(stored[1]), media_type=log.content_type, headers={**ARTIFACT_HEADERS})
        try:
            artifact = await executioner.artifacts.store.get(run_id, name)
        except (ArtifactNotFound, ValueError):
            raise HTTPException(404, f"run {run_id} has no artifact {name!r}") from None
        chunks = executioner.artifacts.store.read(run_id, name)
        return StreamingResponse(
            _guarded(chunks),
            media_type=artifact.content_type,
            headers={"Content-Length": str(artifact.size), "ETag": f'"{artifact.sha256}"', **ARTIFACT_HEADERS},
        )

    @app.get("/api/v1/runs/{run_id}/artifacts", response_model=list[ArtifactView], **read)
    async def list_run_artifacts(
        run_id: str, request: Request, response: Response, page: PageRequest = Depends(page_request)
    ) -> list[ArtifactView]:
        """What the run left, by name, its log among them; a page at a time."""
        if await executioner.get_run(run_id) is None:
            raise HTTPException(404, f"no run {run_id}")
        found = await with_log(run_id)
        return listing(run_id, found, f"/api/v1/runs/{run_id}/artifacts", request, response, page)

    @app.get("/api/v1/runs/{run_id}/artifacts/{name:path}", **read)
    async def get_run_artifact(run_id: str, name: str) -> StreamingResponse:
        return await download(run_id, name)

    @app.get("/api/v1/partitions/{partition_id}/artifacts", response_model=list[ArtifactView], **read)
    async def list_partition_artifacts(
        partition_id: str,
        request: Request,
        response: Response,
        run: int | None = Query(None, ge=0, le=1000, description="which run; default: the latest"),
        page: PageRequest = Depends(page_request),
    ) -> list[ArtifactView]:
        """What the partition's latest run (or `run`) left, by name."""
        run_id = await run_of(partition_id, run)
        found = await with_log(run_id)
        return listing(run_id, found, f"/api/v1/runs/{run_id}/artifacts", request, response, page)

    @app.get("/api/v1/partitions/{partition_id}/artifacts/{name:path}", **read)
    async def get_partition_artifact(
        partition_id: str, name: str, run: int | None = Query(None, ge=0, le=1000)
    ) -> StreamingResponse:
        return await download(await run_of(partition_id, run), name)

    def results_page(
        rows: list[dict[str, Any]], request: Request, response: Response, page: PageRequest, newest_first: bool
    ) -> list[TestResultView]:
        key = (
            (lambda r: [r["recorded_at"], r["run_id"], r["seq"]])
            if newest_first
            else (lambda r: [r["run_id"], r["seq"]])
        )
        shown, next_key = split(rows, page, key)
        link_next(request, response, page, next_key)
        return [TestResultView.model_validate(r) for r in shown]

    @app.get("/api/v1/test-results", response_model=list[TestResultView], **read)
    async def list_test_results(
        request: Request,
        response: Response,
        jobId: str | None = Query(None, max_length=64),  # noqa: N803
        taskId: str | None = Query(None, max_length=64),  # noqa: N803
        partitionId: str | None = Query(None, max_length=64),  # noqa: N803
        project: str | None = Query(None, max_length=200),
        testId: str | None = Query(None, max_length=1000),  # noqa: N803
        outcome: str | None = Query(None, pattern="^(passed|failed|error|skipped)$"),
        page: PageRequest = Depends(page_request),
    ) -> list[TestResultView]:
        """Results per test, from the JUnit reports runs left: a job's, a task's or a partition's (every
        run, by run), or one test's across jobs (`project` and `testId`, newest first)."""
        if not (jobId or taskId or partitionId or (project and testId)):
            raise HTTPException(422, "say whose results: jobId, taskId, partitionId, or project with testId")
        rows = await executioner.test_results.query(
            page,
            job_id=jobId,
            task_id=taskId,
            partition_id=partitionId,
            project=project,
            test_id=testId,
            outcome=outcome,
        )
        newest_first = bool(testId and not (jobId or taskId or partitionId))
        return results_page(rows, request, response, page, newest_first)

    @app.get("/api/v1/test-verdicts", response_model=list[TestVerdict], **read)
    async def list_test_verdicts(
        request: Request,
        response: Response,
        jobId: str | None = Query(None, max_length=64),  # noqa: N803
        taskId: str | None = Query(None, max_length=64),  # noqa: N803
        partitionId: str | None = Query(None, max_length=64),  # noqa: N803
        verdict: str | None = Query(None, pattern="^(passed|failed|intermittent|skipped)$"),
        page: PageRequest = Depends(page_request),
    ) -> list[TestVerdict]:
        """Each test of a job's, task's or partition's runs with its verdict over all of them (a test
        that failed and then passed when run again is `intermittent`) and every run's outcome as the
        evidence; by partition and test id. A failed test that passed before names the partition
        since which it fails every time: its job is the push that broke it. `verdict` keeps those
        of a page that have it."""
        if not (jobId or taskId or partitionId):
            raise HTTPException(422, "say whose verdicts: jobId, taskId or partitionId")
        found, next_key = await executioner.test_results.verdicts(
            page, job_id=jobId, task_id=taskId, partition_id=partitionId
        )
        link_next(request, response, page, next_key)
        return [v for v in found if verdict is None or v.verdict == verdict]

    @app.get("/api/v1/test-history", response_model=list[TestHistory], **read)
    async def test_history(
        project: str = Query(..., min_length=1, max_length=200),
        testId: str | None = Query(None, max_length=1000),  # noqa: N803
        days: float = Query(30.0, gt=0, le=3650, description="the window: results of the last this many days"),
        limit: int = Query(100, ge=1, le=1000, description="without testId: at most this many tests"),
    ) -> list[TestHistory]:
        """A test's flakiness over a window: runs, failures, partitions it failed on every run or
        failed and then passed (intermittent), and, when it has failed every time since a given
        partition after passing before, that partition (its job is the push that broke it).
        Without `testId`: the tests of the project that failed most often in the window, the
        most often intermittent first."""
        since = utcnow() - timedelta(days=days)
        return await executioner.test_results.history(project, since, testId, limit)

    @app.get("/api/v1/partitions/{partition_id}/tests", response_model=list[TestResultView], **read)
    async def partition_tests(
        partition_id: str,
        request: Request,
        response: Response,
        run: int | None = Query(None, ge=0, le=1000, description="which run; default: the latest"),
        outcome: str | None = Query(None, pattern="^(passed|failed|error|skipped)$"),
        page: PageRequest = Depends(page_request),
    ) -> list[TestResultView]:
        """The tests of the partition's latest run (or `run`), in the order its reports gave them."""
        run_id = await run_of(partition_id, run)
        rows = await executioner.test_results.query(page, run_id=run_id, outcome=outcome)
        return results_page(rows, request, response, page, False)

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    metrics_route(app, executioner.metrics.registry, read, description="runs followed, ended, their durations; the bus")
    return app


def _read_from(path: object, offset: int, limit: int | None = None) -> tuple[bytes, int]:
    """What the file holds from `offset` (at most `limit` bytes), and its size."""
    try:
        with open(path, "rb") as f:  # type: ignore[call-overload]
            size = os.fstat(f.fileno()).st_size
            if offset >= size:  # past the end (up to 2^62 may be asked): nothing, not a seek error
                return b"", size
            f.seek(offset)
            return f.read(-1 if limit is None else limit), size
    except FileNotFoundError:
        return b"", 0


async def _guarded(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The chunks; an artifact swept between the answer's head and its body ends the body short,
    which the client sees against Content-Length."""
    try:
        async for chunk in chunks:
            yield chunk
    except ArtifactNotFound:
        return
