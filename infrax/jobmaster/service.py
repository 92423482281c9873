"""The job master: a push becomes a job; the job follows its task request on the bus."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from infrax.bus import Bus, Message, topics
from infrax.bus.messages import JobStatus, RequestStatus, TaskStatus
from infrax.http import ServiceError
from infrax.jobmaster import git
from infrax.jobmaster.plugin import ProjectLogic, Push, PushRejected
from infrax.model import Job, JobTask, PushSubmission, State, TaskDefinition, TaskRequestSubmission, is_final, new_id, utcnow
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database, aware
from infrax.store.tables import job_tasks, jobs

log = logging.getLogger(__name__)


class JobNotFound(Exception):
    pass


class JobMaster:
    def __init__(self, db: Database, bus: Bus, scheduler: SchedulerClient, logic: ProjectLogic, public_url: str) -> None:
        self.db = db
        self.bus = bus
        self.scheduler = scheduler
        self.logic = logic
        self.public_url = public_url.rstrip("/")
        self._subscriptions: list[Any] = []

    async def start(self) -> None:
        self._subscriptions = [
            await self.bus.subscribe("jobmaster", topics.REQUESTS, ["#"], self._on_request_status),
            await self.bus.subscribe("jobmaster-tasks", topics.TASKS, ["#"], self._on_task_status),
        ]
        await self._submit_unsubmitted()

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()

    # -- pushes -----------------------------------------------------------------------------

    async def push(self, submission: PushSubmission, source: str = "cli") -> tuple[Job, bool]:
        """The job for this revision, created (True) or the one that already exists (False)."""
        try:
            revision = await git.resolve(submission.repository, submission.revision)
            changed = await git.changed_paths(submission.repository, revision)
        except git.GitError as error:
            raise PushRejected(str(error)) from error
        job_id = new_id()
        repo = submission.repository
        push = Push(
            repository=repo, revision=revision, branch=submission.branch, changed_paths=changed, source=source,
            read_file=lambda path: git.read_file(repo, revision, path),
            list_files=lambda: git.list_files(repo, revision),
            file_url=lambda path: f"{self.public_url}/api/v1/jobs/{job_id}/files/{path}",
        )
        plan = await self.logic.plan(push)
        existing = await self._find(plan.project, revision)
        if existing is not None:
            return existing, False
        now = utcnow()
        details = {"branch": submission.branch, "changedPaths": changed,
                   "tasks": [t.wire() for t in plan.tasks]}
        try:
            async with self.db.begin() as conn:
                await conn.execute(insert(jobs).values(
                    id=job_id, project=plan.project, revision=revision, repository=repo, source=source,
                    state=State.PENDING, details=details, created_at=now, updated_at=now))
        except IntegrityError:  # the same revision pushed twice at once
            existing = await self._find(plan.project, revision)
            assert existing is not None
            return existing, False
        await self._publish(job_id, plan.project, revision, State.PENDING, None)
        await self._submit(job_id)
        return await self.get(job_id), True

    async def _submit(self, job_id: str) -> None:
        """Send the job's task request; a job whose request did not get through is retried at start."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
        definitions = [TaskDefinition.model_validate(t) for t in row["details"]["tasks"]]
        if not definitions:
            await self._set_state(row, State.COMPLETED, "no tasks to run")
            return
        existing = await self.scheduler.list_requests(job_id)
        if existing:
            request_id = existing[0].id
        else:
            try:
                request = await self.scheduler.submit(TaskRequestSubmission(
                    job_id=job_id, project=row["project"], revision=row["revision"],
                    changed_paths=row["details"].get("changedPaths"), tasks=definitions))
            except ServiceError as error:
                if error.status is not None and 400 <= error.status < 500:
                    await self._set_state(row, State.EXCEPTION, f"the scheduler refused the tasks: {error.detail}")
                    raise PushRejected(error.detail) from error
                raise
            request_id = request.id
        async with self.db.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(request_id=request_id))

    async def _submit_unsubmitted(self) -> None:
        async with self.db.begin() as conn:
            pending = (await conn.execute(
                select(jobs.c.id).where(jobs.c.request_id.is_(None), jobs.c.state == State.PENDING)
            )).scalars().all()
        for job_id in pending:
            try:
                await self._submit(job_id)
            except (ServiceError, PushRejected) as error:
                log.warning("job %s still not submitted: %s", job_id, error)

    # -- following --------------------------------------------------------------------------

    async def _on_request_status(self, message: Message) -> None:
        status = RequestStatus.model_validate(message.body)
        if status.job_id is None:
            return
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == status.job_id))).mappings().first()
        if row is None or row["state"] == status.state or is_final(row["state"]):
            return  # news of a job we finished already arrives late, or twice
        await self._set_state(row, State(status.state), status.message, request_id=status.request_id)

    async def _on_task_status(self, message: Message) -> None:
        status = TaskStatus.model_validate(message.body)
        if status.job_id is None:
            return
        values = {"job_id": status.job_id, "name": status.name, "state": status.state, "message": status.message}
        async with self.db.begin() as conn:
            updated = await conn.execute(update(job_tasks).where(job_tasks.c.task_id == status.task_id).values(**values))
            if updated.rowcount == 0:
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(job_tasks).values(task_id=status.task_id, **values))
                except IntegrityError:
                    pass

    async def _set_state(self, row: Any, state: State, message: str | None, **extra: Any) -> None:
        async with self.db.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == row["id"]).values(
                state=state, message=message, updated_at=utcnow(), **extra))
        await self._publish(row["id"], row["project"], row["revision"], state, State(row["state"]), message)

    async def _publish(self, job_id: str, project: str, revision: str, state: State, previous: State | None,
                       message: str | None = None) -> None:
        status = JobStatus(job_id=job_id, project=project, revision=revision, state=state, previous_state=previous,
                           message=message)
        await self.bus.publish(topics.JOBS, topics.routing_key(job_id), status.wire())

    # -- queries ----------------------------------------------------------------------------

    async def _find(self, project: str, revision: str) -> Job | None:
        async with self.db.begin() as conn:
            job_id = (await conn.execute(
                select(jobs.c.id).where(jobs.c.project == project, jobs.c.revision == revision))).scalar()
        return None if job_id is None else await self.get(job_id)

    async def get(self, job_id: str) -> Job:
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            task_rows = (await conn.execute(select(job_tasks).where(job_tasks.c.job_id == job_id))).mappings().all()
        return _job(row, [JobTask(id=t["task_id"], name=t["name"], state=t["state"], message=t["message"])
                          for t in task_rows])

    async def list(self, project: str | None = None, revision: str | None = None, limit: int = 100) -> list[Job]:
        query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
        if project:
            query = query.where(jobs.c.project == project)
        if revision:
            query = query.where(jobs.c.revision.startswith(revision))
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_job(r, []) for r in rows]

    async def cancel(self, job_id: str) -> Job:
        job = await self.get(job_id)
        if job.request_id:
            await self.scheduler.cancel_job(job_id)
        elif not is_final(job.state):
            async with self.db.begin() as conn:
                row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
            await self._set_state(row, State.CANCELLED, "cancelled before its tasks were submitted")
        return await self.get(job_id)

    async def file_at_revision(self, job_id: str, path: str) -> bytes | None:
        job = await self.get(job_id)
        return await git.read_file(job.repository, job.revision, path)


def _job(row: Any, task_list: list[JobTask]) -> Job:
    details = dict(row["details"] or {})
    details.pop("tasks", None)
    return Job(id=row["id"], project=row["project"], revision=row["revision"], repository=row["repository"],
               source=row["source"], state=row["state"], request_id=row["request_id"], message=row["message"],
               details=details, created_at=aware(row["created_at"]), updated_at=aware(row["updated_at"]),
               tasks=task_list)
