"""The read-only part of Taskcluster's queue API that Treeherder calls, over the tasks the job
master reports (`queue_tasks.py`): a repository's `tc_root_url` set to infrax's public URL is
all a stock Treeherder needs. Readable with `jobmaster:read` (or by anyone with `public_read`)."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException
from fastapi.responses import RedirectResponse

from infrax.artifacts import InvalidArtifactName, check_name
from infrax.auth import route_options
from infrax.executioner.artifacts import LOG_ARTIFACT, content_type_of
from infrax.http import ServiceError
from infrax.jobmaster.service import JobMaster
from infrax.model import run_id_of
from infrax.treeherder import queue_tasks as tc
from infrax.treeherder import task_runs
from infrax.treeherder.task_runs import TcRun, TcTask

log = logging.getLogger(__name__)

PUBLIC = "public/"  # what a run left, named as Taskcluster names what anyone may read


async def reported_task(jobmaster: JobMaster, task_id: str) -> tuple[TcTask, list[TcRun]]:
    """The task (a partition, or a placeholder) a Taskcluster task id names, and its runs."""
    partition_id = tc.partition_id(task_id)
    known = None
    if partition_id is not None:
        async with jobmaster.db.begin() as conn:
            known = await task_runs.task_by_partition(conn, partition_id)
    if known is None:
        # Taskcluster's own answer to an unknown task; Treeherder retries a job whose task 404s.
        raise HTTPException(404, f"task {task_id!r} not found: no partition of a reported job has this id")
    return known


def queue_router(jobmaster: JobMaster) -> APIRouter:
    router = APIRouter(prefix="/api/queue/v1")
    read = route_options("jobmaster:read", readable=True)

    async def found(task_id: str) -> tuple[TcTask, list[TcRun], dict[str, Any]]:
        task, runs = await reported_task(jobmaster, task_id)
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
        """The run's log as `public/logs/live_backing.log` and every other thing it left as
        `public/<its name>` (its errorsummary among them): Treeherder links each, and reads an
        errorsummary it finds here."""
        task, runs, _job = await found(task_id)
        run = run_of(runs, run_id, task_id)
        if not run.log_url:
            return {"artifacts": []}
        names = [tc.LOG_ARTIFACT]
        if jobmaster.executioners is not None:
            try:
                left = await jobmaster.executioners.artifact_names(run_id_of(task.partition_id, run.run)) or []
            except ServiceError as error:  # the log is still there to read; the rest when it answers
                log.warning("listing the artifacts of %s run %d: %s", task_id, run_id, error)
                left = []
            names += [f"{PUBLIC}{name}" for name in left if name != LOG_ARTIFACT]
        expires = tc.time(task.created_at + tc.EXPIRES)
        return {
            "artifacts": [
                {"storageType": "reference", "name": name, "expires": expires, "contentType": content_type_of(name)}
                for name in names
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

    def artifact_of(task: TcTask, runs: list[TcRun], run_id: int, task_id: str, name: str) -> RedirectResponse:
        """Another artifact of the run: a redirect to where its executioner serves it."""
        run = run_of(runs, run_id, task_id)
        plain = name.removeprefix(PUBLIC)
        try:  # `..` and the like would redirect elsewhere on the executioner
            check_name(run_id_of(task.partition_id, run.run), plain)
        except InvalidArtifactName:
            raise HTTPException(404, f"run {run_id} of task {task_id!r} has no artifact {name!r}") from None
        if not name.startswith(PUBLIC) or not run.log_url or not run.log_url.endswith("/log"):
            raise HTTPException(404, f"run {run_id} of task {task_id!r} has no artifact {name!r}")
        return RedirectResponse(f"{run.log_url.removesuffix('/log')}/artifacts/{quote(plain)}", 303)

    @router.get("/task/{task_id}/runs/{run_id}/artifacts/{name:path}", **read)
    async def run_artifact(task_id: str, run_id: int, name: str) -> RedirectResponse:
        task, runs, _job = await found(task_id)
        return artifact_of(task, runs, run_id, task_id, name)

    @router.get("/task/{task_id}/artifacts/{name:path}", **read)
    async def latest_artifact(task_id: str, name: str) -> RedirectResponse:
        task, runs, _job = await found(task_id)
        return artifact_of(task, runs, max(0, len(runs) - 1), task_id, name)

    return router


def inspect_router(jobmaster: JobMaster) -> APIRouter:
    """`<rootUrl>/tasks/<taskId>`: where Treeherder's "inspect task" goes. The partition's page
    on the dashboard (its runs, logs and failures), else its job."""
    router = APIRouter()

    @router.get("/tasks/{task_id}", **route_options("jobmaster:read", readable=True))
    async def inspect_task(task_id: str) -> RedirectResponse:
        task, _runs = await reported_task(jobmaster, task_id)
        if jobmaster.dashboard_url and task.count > 0:  # not a placeholder of a task waiting to be planned
            return RedirectResponse(f"{jobmaster.dashboard_url.rstrip('/')}/partitions/{task.partition_id}", 303)
        return RedirectResponse(jobmaster.job_page(task.job_id), 303)

    return router
