"""The read-only part of Taskcluster's queue API that Treeherder calls, over the tasks the job
master reports (`queue_tasks.py`): a repository's `tc_root_url` set to infrax's public URL is
all a stock Treeherder needs. Readable with `jobmaster:read` (or by anyone with `public_read`)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse

from infrax.auth import route_options
from infrax.jobmaster.service import JobMaster
from infrax.treeherder import queue_tasks as tc
from infrax.treeherder import task_runs
from infrax.treeherder.task_runs import TcRun, TcTask


def queue_router(jobmaster: JobMaster) -> APIRouter:
    router = APIRouter(prefix="/api/queue/v1")
    read = route_options("jobmaster:read", readable=True)

    async def found(task_id: str) -> tuple[TcTask, list[TcRun], dict[str, Any]]:
        partition_id = tc.partition_id(task_id)
        known = None
        if partition_id is not None:
            async with jobmaster.db.begin() as conn:
                known = await task_runs.task_by_partition(conn, partition_id)
        if known is None:
            # Taskcluster's own answer to an unknown task; Treeherder retries a job whose task 404s.
            raise HTTPException(404, f"task {task_id!r} not found: no partition of a reported job has this id")
        task, runs = known
        job = await jobmaster.treeherder.job_info(task.job_id)
        if job is None:
            raise HTTPException(404, f"task {task_id!r} belongs to job {task.job_id}, which is gone")
        return task, runs, job

    def run_of(runs: list[TcRun], run_id: int, task_id: str) -> TcRun:
        if not 0 <= run_id < len(runs):
            raise HTTPException(404, f"task {task_id!r} has no run {run_id} (it has {len(runs)})")
        return runs[run_id]

    @router.get("/task/{task_id}", **read)
    async def task_definition(task_id: str) -> dict[str, Any]:
        """The task's definition, with Treeherder's `extra.treeherder`."""
        task, _runs, job = await found(task_id)
        return tc.definition(task, job)

    @router.get("/task/{task_id}/status", **read)
    async def task_status(task_id: str) -> dict[str, Any]:
        task, runs, job = await found(task_id)
        return {"status": tc.status(task, runs, job["retries"].get(task.task_name, 0))}

    @router.get("/task/{task_id}/runs/{run_id}/artifacts", **read)
    async def run_artifacts(task_id: str, run_id: int) -> dict[str, Any]:
        task, runs, _job = await found(task_id)
        run = run_of(runs, run_id, task_id)
        if not run.log_url:
            return {"artifacts": []}
        expires = tc.time(task.created_at + tc.EXPIRES)
        return {
            "artifacts": [
                {"storageType": "reference", "name": tc.LOG_ARTIFACT, "expires": expires, "contentType": "text/plain"}
            ]
        }

    def log_of(runs: list[TcRun], run_id: int, task_id: str) -> RedirectResponse:
        """The run's log: a redirect to where the executioner serves it (as Taskcluster redirects)."""
        run = run_of(runs, run_id, task_id)
        if not run.log_url:
            raise HTTPException(404, f"run {run_id} of task {task_id!r} has no log yet")
        return RedirectResponse(run.log_url, status_code=303)

    @router.get("/task/{task_id}/runs/{run_id}/artifacts/public/logs/live_backing.log", **read)
    async def run_log(task_id: str, run_id: int) -> RedirectResponse:
        _task, runs, _job = await found(task_id)
        return log_of(runs, run_id, task_id)

    @router.get("/task/{task_id}/artifacts/public/logs/live_backing.log", **read)
    async def latest_log(task_id: str) -> RedirectResponse:
        _task, runs, _job = await found(task_id)
        return log_of(runs, max(0, len(runs) - 1), task_id)

    return router
