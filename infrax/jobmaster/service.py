"""The job master: a push becomes a job; the job follows its task request on the bus.

Pushes come from the CLI (`POST /api/v1/pushes`), from GitHub webhooks (`github.py`) and
from Mercurial pushes (`pushlog.py`); each trigger resolves its revision into a `Checkout`
and calls `start_job`. Reporting back goes to GitHub (`statuses.py`) and Treeherder
(`infrax.treeherder`), both driven by the bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from infrax.bus import Bus, Message, topics
from infrax.bus.messages import RequestStatus, TaskStatus
from infrax.executioner.client import ExecutionerPool
from infrax.http import ServiceError
from infrax.ids import prefix_clause
from infrax.jobmaster import git, hg
from infrax.jobmaster.actions import JobActions, job_status
from infrax.jobmaster.checkout import Checkout, Origin
from infrax.jobmaster.github import GitHubWebhooks
from infrax.jobmaster.metrics import JobMasterMetrics
from infrax.jobmaster.mirrors import MirrorError, Mirrors
from infrax.jobmaster.plugin import ProjectLogic, Push, PushRejected
from infrax.jobmaster.policy import RepositoryRefused
from infrax.jobmaster.pushlog import HgPushes
from infrax.jobmaster.records import insert_once
from infrax.jobmaster.settings import JobMasterSettings
from infrax.jobmaster.sources import Pack, pack
from infrax.jobmaster.statuses import CommitStatuses
from infrax.jobmaster.vcs import Source, VcsError
from infrax.model import (
    FINAL_STATES,
    PROJECT_PATTERN,
    Job,
    JobTask,
    PushSubmission,
    State,
    TaskDefinition,
    TaskRequestSubmission,
    is_final,
    new_id,
    utcnow,
)
from infrax.outbox import Outbox
from infrax.pagination import DEFAULT_LIMIT, PageRequest, keyset, split, time_and_id
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database, aware
from infrax.store.tables import job_origins, job_tasks, jobmaster_outbox, jobs
from infrax.treeherder import pushes
from infrax.treeherder.reporter import TreeherderReporter

log = logging.getLogger(__name__)

_SCP_URL = re.compile(r"^[\w.-]+@[\w.-]+:")


class JobNotFound(Exception):
    pass


class JobMaster(JobActions):
    def __init__(
        self,
        db: Database,
        bus: Bus,
        scheduler: SchedulerClient,
        logic: ProjectLogic,
        public_url: str,
        settings: JobMasterSettings | None = None,
        executioners: ExecutionerPool | None = None,
    ) -> None:
        self.db = db
        self.executioners = executioners  # what runs left, for the queue API's artifact lists
        self.bus = bus
        self.scheduler = scheduler
        self.logic = logic
        self.public_url = public_url.rstrip("/")
        self.settings = settings or JobMasterSettings()
        self.mirrors = Mirrors(self.settings.mirrors, self.settings.url_rewrites)
        self.github = GitHubWebhooks(self, self.settings.github_secrets)
        self.statuses = CommitStatuses(
            self,
            self.settings.github_api_url,
            self.settings.github_token,
            deadline=self.settings.github_status_deadline,
            backoff=self.settings.github_status_backoff,
        )
        # Every job state change is written here with the change itself; the relay publishes it.
        self.outbox = Outbox(db, bus, jobmaster_outbox)
        # Where people look at a job: the dashboard's pages when one runs, else the API's JSON.
        self.dashboard_url: str | None = None
        self.metrics = JobMasterMetrics(db, bus)
        self.hg = HgPushes(self, self.settings.hg_poll, self.settings.hg_poll_interval)
        self.treeherder = TreeherderReporter(self, self.settings.treeherder_build_system)
        self._subscriptions: list[Any] = []
        self._reconciler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.outbox.start()
        self._subscriptions = [
            await self.bus.subscribe("jobmaster", topics.REQUESTS, ["#"], self._on_request_status),
            await self.bus.subscribe("jobmaster-tasks", topics.TASKS, ["#"], self._on_task_status),
            await self.statuses.subscribe(),
        ]
        if self.settings.treeherder:
            self._subscriptions.append(await self.treeherder.subscribe())
            self._subscriptions.append(await self.treeherder.subscribe_tasks())
        await self._submit_unsubmitted()
        self.hg.start()
        self._reconciler = asyncio.create_task(self._keep_reconciling(), name="jobmaster-reconcile")

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
        await self.hg.stop()
        for sub in self._subscriptions:
            await sub.cancel()
        await self.statuses.close()
        await self.outbox.stop()

    # -- pushes -----------------------------------------------------------------------------

    async def push(
        self, submission: PushSubmission, source: str = "cli", authorize: Callable[[str], None] | None = None
    ) -> tuple[Job, bool]:
        """The job for a revision of a local repository (git or hg) or of a git clone URL.

        `authorize` is called with the project once the revision's configuration names it, before
        anything is stored; it raises to refuse."""
        try:
            return await self._push(submission, source, authorize)
        except PushRejected as error:
            self.metrics.pushes.labels("refused").inc()
            log.info("push of %s@%s refused: %s", submission.repository[:200], submission.revision[:40], error)
            raise

    async def _push(
        self, submission: PushSubmission, source: str, authorize: Callable[[str], None] | None
    ) -> tuple[Job, bool]:
        repository, revision = submission.repository, submission.revision
        try:
            self.settings.repositories.check(repository)
        except RepositoryRefused as error:
            raise PushRejected(str(error)) from error
        try:
            if "://" in repository or _SCP_URL.match(repository):
                repository = self.mirrors.rewrite(repository)
                reader = Source("git", await self.mirrors.git(repository))
            else:
                reader = Source.detect(repository)
                if reader.vcs == "hg" and revision == "HEAD":
                    revision = "tip"
            resolved = await reader.resolve(revision)
            changed = await reader.changed_paths(resolved)
        except (VcsError, MirrorError) as error:
            raise PushRejected(str(error)) from error
        except OSError as error:  # a name too long, a folder it may not read
            raise PushRejected(f"repository {repository[:200]!r}: {error.strerror or error}") from error
        if reader.vcs == "hg" and reader.path == repository:
            # A local Mercurial repository's push is one of its pushlog, as a hook's would be.
            return await self.hg.push_revision(repository, resolved, authorize)
        announcements: tuple[tuple[str, str, dict[str, Any]], ...] = ()
        if reader.vcs == "git":
            branch = submission.branch or await git.current_branch(reader.path) or "main"
            announcements = (pushes.git_push(repository, branch, await git.commit_info(reader.path, resolved)),)
        return await self.start_job(
            Checkout(reader, repository, resolved, submission.branch, changed, source, announcements=announcements),
            authorize,
        )

    async def start_job(self, checkout: Checkout, authorize: Callable[[str], None] | None = None) -> tuple[Job, bool]:
        """The job for this revision: created or run again after a cancel (True), or the existing one (False).

        One job per project and revision: a revision pushed again returns its job (adding the new
        origin to it), except a cancelled job, which runs again (a pull request closed and reopened).
        """
        job_id = new_id()
        reader, revision = checkout.source, checkout.revision
        push = Push(
            repository=checkout.repository,
            revision=revision,
            branch=checkout.branch,
            changed_paths=checkout.changed_paths,
            source=checkout.trigger,
            read_file=lambda path: reader.read_file(revision, path),
            list_files=lambda: reader.list_files(revision),
            file_sizes=lambda: reader.file_sizes(revision),
            file_url=lambda path: f"{self.public_url}/api/v1/jobs/{job_id}/files/{path}",
        )
        try:
            plan = await self.logic.plan(push)
        except VcsError as error:
            raise PushRejected(str(error)) from error
        if not re.fullmatch(PROJECT_PATTERN, plan.project):
            # Before anything is stored: a project name is a word of routing keys, scopes and paths.
            raise PushRejected(f"project name {plan.project!r} is not one: letters, digits, '-' and '_', 1 to 100")
        if authorize is not None:
            authorize(plan.project)
        existing = await self._find(plan.project, revision)
        if existing is not None:
            return await self._again(existing, checkout)
        now = utcnow()
        details: dict[str, Any] = {
            "trusted": checkout.trusted,
            "branch": checkout.branch,
            "changedPaths": checkout.changed_paths,
            "tasks": [t.wire() for t in plan.tasks],
            "vcs": reader.vcs,
            "author": await reader.author(revision),  # Treeherder's owner when no pusher is known
        }
        if reader.path != checkout.repository:
            details["readFrom"] = reader.path
        if checkout.origin is not None:
            details["origin"] = _origin_details(checkout.origin)
        async with self.outbox.begin() as (conn, messages):
            try:
                async with conn.begin_nested():
                    await conn.execute(
                        insert(jobs).values(
                            id=job_id,
                            project=plan.project,
                            revision=revision,
                            repository=checkout.repository,
                            source=checkout.trigger,
                            state=State.PENDING,
                            details=details,
                            created_at=now,
                            updated_at=now,
                        )
                    )
                    if checkout.origin is not None:
                        await conn.execute(insert(job_origins).values(_origin_row(job_id, checkout.origin)))
                messages.append(job_status(job_id, plan.project, revision, State.PENDING, None))
                messages += checkout.announcements
                created = True
            except IntegrityError:  # the same revision pushed twice at once
                created = False
        if not created:
            existing = await self._find(plan.project, revision)
            assert existing is not None
            return await self._again(existing, checkout)
        await self._submit(job_id)
        self.metrics.pushes.labels("created").inc()
        log.info("push of %s@%s (%s): job %s created", plan.project, revision[:12], checkout.trigger, job_id[:12])
        return await self.get(job_id), True

    async def _again(self, job: Job, checkout: Checkout) -> tuple[Job, bool]:
        origin = checkout.origin
        added = origin is not None and await self._add_origin(job.id, origin)
        if checkout.announcements:  # the push again: it may be news to whoever missed it the first time
            async with self.outbox.begin() as (_conn, messages):
                messages += checkout.announcements
        self.metrics.pushes.labels("existing").inc()
        log.info("push of %s@%s: job %s exists (%s)", job.project, job.revision[:12], job.id[:12], job.state)
        if job.state == State.CANCELLED or (job.state == State.EXCEPTION and job.request_id is None):
            await self._run_again(job.id, "pushed again")
            return await self.get(job.id), True
        if added and origin is not None and origin.host == "github":
            self.statuses.report_soon(job.id)  # the new pull request shows the job's state at once
        return job, False

    async def _add_origin(self, job_id: str, origin: Origin) -> bool:
        return await insert_once(self.db, job_origins, _origin_row(job_id, origin))

    async def _submit(self, job_id: str) -> None:
        """Send the job's task request; a job whose request did not get through is retried at start."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
        definitions = [TaskDefinition.model_validate(t) for t in row["details"]["tasks"]]
        if not definitions:
            await self._set_state(row, State.COMPLETED, "no tasks to run")
            return
        previous = set(row["details"].get("previousRequests", []))
        # A request this job master sent whose answer was lost; only its own (the job's project and
        # revision: only the job master may attach requests to a job).
        existing = [
            r
            for r in await self.scheduler.list_requests(job_id)
            if r.id not in previous and r.project == row["project"] and r.revision == row["revision"]
        ]
        if existing:
            request_id = existing[0].id
        else:
            try:
                request = await self.scheduler.submit(
                    TaskRequestSubmission(
                        job_id=job_id,
                        project=row["project"],
                        revision=row["revision"],
                        changed_paths=row["details"].get("changedPaths"),
                        tasks=definitions,
                        trusted=bool(row["details"].get("trusted", False)),
                    )
                )
            except ServiceError as error:
                if error.status is not None and 400 <= error.status < 500:
                    await self._refused(row, f"the scheduler refused the tasks: {error.detail}")
                    raise PushRejected(error.detail) from error
                raise
            request_id = request.id
        async with self.db.begin() as conn:
            await conn.execute(update(jobs).where(jobs.c.id == job_id).values(request_id=request_id))

    async def _refused(self, row: Any, message: str) -> None:
        """The scheduler refused the job's tasks (a 4xx): the push is answered with that, and the
        job is forgotten, so that the next push of the revision tries again instead of finding a
        job in `exception`. Its end is announced, for whoever heard it was pending. A job run again
        after a cancel keeps its history: it ends in `exception`, and a later push runs it again."""
        if row["details"].get("previousRequests"):
            await self._set_state(row, State.EXCEPTION, message)
            return
        async with self.outbox.begin() as (conn, messages):
            await conn.execute(delete(job_origins).where(job_origins.c.job_id == row["id"]))
            await conn.execute(delete(jobs).where(jobs.c.id == row["id"], jobs.c.request_id.is_(None)))
            messages.append(
                job_status(row["id"], row["project"], row["revision"], State.EXCEPTION, row["state"], message)
            )

    async def _submit_unsubmitted(self) -> None:
        async with self.db.begin() as conn:
            pending = (
                (
                    await conn.execute(
                        select(jobs.c.id).where(jobs.c.request_id.is_(None), jobs.c.state == State.PENDING)
                    )
                )
                .scalars()
                .all()
            )
        for job_id in pending:
            try:
                await self._submit(job_id)
            except (ServiceError, PushRejected) as error:
                log.warning("job %s still not submitted: %s", job_id, error)

    # -- following --------------------------------------------------------------------------

    async def _current(self, job_id: str, request_id: str) -> Any:
        """The job's row, or None when this news is of a request the job no longer follows."""
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
        if row is None or request_id in (row["details"] or {}).get("previousRequests", []):
            return None
        return row

    async def _keep_reconciling(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reconcile_interval)
            try:
                caught_up = await self.reconcile(older_than=self.settings.reconcile_interval)
            except Exception:  # the next round tries again
                log.exception("checking unfinished jobs against the scheduler failed")
            else:
                if caught_up:
                    log.warning("%d jobs had missed their request's final status on the bus; caught up", caught_up)

    async def reconcile(self, older_than: float = 0.0) -> int:
        """Give each unfinished job the final state its task request has, if the bus never said so.

        The scheduler commits a change and then publishes it: a crash in between loses the message,
        never the state. Asking for the requests of jobs unchanged for `older_than` seconds closes
        that gap. Returns how many jobs caught up.
        """
        cutoff = utcnow() - timedelta(seconds=older_than)
        async with self.db.begin() as conn:
            rows = (
                await conn.execute(
                    select(jobs.c.id, jobs.c.request_id, jobs.c.updated_at).where(
                        jobs.c.state.not_in([str(s) for s in FINAL_STATES]), jobs.c.request_id.is_not(None)
                    )
                )
            ).all()
        caught_up = 0
        for job_id, request_id, updated_at in rows:
            if aware(updated_at) > cutoff:
                continue
            try:
                request = await self.scheduler.get_request(request_id)
            except ServiceError as error:
                log.debug("could not check request %s of job %s: %s", request_id, job_id, error)
                continue
            if not is_final(request.state):
                continue
            row = await self._current(job_id, request_id)
            if row is None or row["request_id"] != request_id or is_final(row["state"]):
                continue
            await self._set_state(row, State(request.state), request.message, request_id=request_id)
            caught_up += 1
        return caught_up

    async def _on_request_status(self, message: Message) -> None:
        status = RequestStatus.model_validate(message.body)
        if status.job_id is None:
            return
        row = await self._current(status.job_id, status.request_id)
        if row is None or row["state"] == status.state:
            return
        if is_final(row["state"]) and status.previous_state != row["state"]:
            return  # news of a job we finished already arrives late, or twice (a re-run leaves from where it is)
        await self._set_state(row, State(status.state), status.message, request_id=status.request_id)

    async def _on_task_status(self, message: Message) -> None:
        status = TaskStatus.model_validate(message.body)
        if status.job_id is None or await self._current(status.job_id, status.request_id) is None:
            return
        values = {"job_id": status.job_id, "name": status.name, "state": status.state, "message": status.message}
        async with self.db.begin() as conn:
            # Never back from a final state, unless the news leaves from it (a re-run of failed
            # partitions): a message published again after a broker outage (at least once) may
            # bring a task's `running` after its `completed`.
            current: ColumnElement[bool] = job_tasks.c.state.not_in([str(s) for s in FINAL_STATES])
            if status.previous_state is not None and is_final(status.previous_state):
                current = current | (job_tasks.c.state == status.previous_state)
            updated = await conn.execute(
                update(job_tasks).where(job_tasks.c.task_id == status.task_id, current).values(**values)
            )
            if updated.rowcount == 0 and not await _task_known(conn, status.task_id):
                try:
                    async with conn.begin_nested():
                        await conn.execute(insert(job_tasks).values(task_id=status.task_id, **values))
                except IntegrityError:
                    pass

    async def _set_state(self, row: Any, state: State, message: str | None, **extra: Any) -> None:
        """The job's new state and its message, in one transaction; a repeat (redelivered news of a
        change already made) changes nothing and writes nothing."""
        async with self.outbox.begin() as (conn, messages):
            changed = await conn.execute(
                update(jobs)
                .where(jobs.c.id == row["id"], jobs.c.state == row["state"])
                .values(state=state, message=message, updated_at=utcnow(), **extra)
            )
            if changed.rowcount and is_final(state):
                took = (utcnow() - aware(row["created_at"])).total_seconds()
                self.metrics.durations.labels(state.value).observe(took)
                log.info(
                    "job %s (%s@%s) ended %s after %.1f s%s",
                    row["id"][:12],
                    row["project"],
                    row["revision"][:12],
                    state.value,
                    took,
                    f": {message[:300]}" if message else "",
                )
            if changed.rowcount:
                messages.append(
                    job_status(row["id"], row["project"], row["revision"], state, State(row["state"]), message)
                )

    # -- queries ----------------------------------------------------------------------------

    async def _find(self, project: str, revision: str) -> Job | None:
        async with self.db.begin() as conn:
            job_id = (
                await conn.execute(select(jobs.c.id).where(jobs.c.project == project, jobs.c.revision == revision))
            ).scalar()
        return None if job_id is None else await self.get(job_id)

    def job_page(self, job_id: str) -> str:
        if self.dashboard_url:
            return f"{self.dashboard_url.rstrip('/')}/jobs/{job_id}"
        return f"{self.public_url}/api/v1/jobs/{job_id}"

    async def get(self, job_id: str) -> Job:
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            task_rows = (await conn.execute(select(job_tasks).where(job_tasks.c.job_id == job_id))).mappings().all()
        return _job(
            row, [JobTask(id=t["task_id"], name=t["name"], state=t["state"], message=t["message"]) for t in task_rows]
        )

    async def list_jobs(
        self,
        project: str | None = None,
        revision: str | None = None,
        page: PageRequest | None = None,
        *,
        state: str | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[Job], list[Any] | None]:
        """Newest first, a page at a time; and the key the next page starts after."""
        page = page or PageRequest(DEFAULT_LIMIT, None)
        query = select(jobs)
        if project:
            query = query.where(jobs.c.project == project)
        if state:
            query = query.where(jobs.c.state == state)
        if id_prefix:
            query = query.where(prefix_clause(jobs.c.id, id_prefix))
        if revision:
            query = query.where(jobs.c.revision.startswith(revision))
        query = keyset(query, page, [jobs.c.created_at, jobs.c.id], descending=True, parse=time_and_id)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        items, after = split(rows, page, lambda r: (aware(r["created_at"]), r["id"]))
        return [_job(r, []) for r in items], after

    async def origins(self, job_id: str, host: str | None = None) -> list[dict[str, Any]]:
        query = select(job_origins).where(job_origins.c.job_id == job_id)
        if host:
            query = query.where(job_origins.c.host == host)
        async with self.db.begin() as conn:
            return [dict(r) for r in (await conn.execute(query.order_by(job_origins.c.created_at))).mappings().all()]

    async def file_at_revision(self, job_id: str, path: str) -> bytes | None:
        reader, revision = await self._source_of(job_id)
        return await reader.read_file(revision, path)

    async def source_pack(self, job_id: str, have: list[str], depth: int | None = None) -> Pack:
        """What a container's cache holding `have` lacks of the job's revision (infrax.jobmaster.sources)."""
        reader, revision = await self._source_of(job_id)
        try:
            return await pack(reader, revision, have, depth)
        except (git.GitError, hg.HgError) as error:
            raise VcsError(str(error)) from error

    async def _source_of(self, job_id: str) -> tuple[Source, str]:
        job = await self.get(job_id)
        async with self.db.begin() as conn:
            details = (await conn.execute(select(jobs.c.details).where(jobs.c.id == job_id))).scalar() or {}
        return Source(details.get("vcs", "git"), details.get("readFrom", job.repository)), job.revision


async def _task_known(conn: Any, task_id: str) -> bool:
    return (await conn.execute(select(job_tasks.c.task_id).where(job_tasks.c.task_id == task_id))).first() is not None


def _origin_row(job_id: str, origin: Origin) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "host": origin.host,
        "repository": origin.repository,
        "ref": origin.ref,
        "pull_request": origin.pull_request,
        "created_at": utcnow(),
    }


def _origin_details(origin: Origin) -> dict[str, Any]:
    return {
        "host": origin.host,
        "repository": origin.repository,
        "ref": origin.ref,
        **({"pullRequest": origin.pull_request} if origin.pull_request is not None else {}),
        **origin.info,
    }


def _job(row: Any, task_list: list[JobTask]) -> Job:
    details = dict(row["details"] or {})
    details.pop("tasks", None)
    return Job(
        id=row["id"],
        project=row["project"],
        revision=row["revision"],
        repository=row["repository"],
        source=row["source"],
        state=row["state"],
        request_id=row["request_id"],
        message=row["message"],
        details=details,
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        tasks=task_list,
    )
