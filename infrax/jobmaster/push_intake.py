"""How a push becomes a job: the CLI's push resolved into a `Checkout` (the other triggers,
`github.py` and `pushlog.py`, make theirs), the project's logic asked for its tasks, one job per
project and revision stored with its announcements, and its task request sent to the scheduler."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from infrax.http import ServiceError
from infrax.jobmaster import git
from infrax.jobmaster.actions import job_status
from infrax.jobmaster.checkout import Checkout, Origin
from infrax.jobmaster.metrics import JobMasterMetrics
from infrax.jobmaster.mirrors import MirrorError, Mirrors
from infrax.jobmaster.plugin import ProjectLogic, Push, PushRejected
from infrax.jobmaster.policy import RepositoryRefused
from infrax.jobmaster.records import insert_once
from infrax.jobmaster.settings import JobMasterSettings
from infrax.jobmaster.statuses import CommitStatuses
from infrax.jobmaster.vcs import Source, VcsError
from infrax.model import (
    PROJECT_PATTERN,
    Job,
    PushSubmission,
    State,
    TaskDefinition,
    TaskRequestSubmission,
    new_id,
    utcnow,
)
from infrax.outbox import Outbox
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database
from infrax.store.tables import job_origins, jobs
from infrax.treeherder import pushes

if TYPE_CHECKING:
    from infrax.jobmaster.pushlog import HgPushes

log = logging.getLogger(__name__)

_SCP_URL = re.compile(r"^[\w.-]+@[\w.-]+:")


class JobPushes:
    db: Database
    outbox: Outbox
    scheduler: SchedulerClient
    logic: ProjectLogic
    public_url: str
    settings: JobMasterSettings
    mirrors: Mirrors
    statuses: CommitStatuses
    metrics: JobMasterMetrics
    hg: HgPushes

    if TYPE_CHECKING:

        async def get(self, job_id: str) -> Job: ...

        async def _find(self, project: str, revision: str) -> Job | None: ...

        async def _set_state(self, row: Any, state: State, message: str | None, **extra: Any) -> None: ...

        async def _run_again(self, job_id: str, why: str, any_end: bool = False) -> None: ...

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
        if plan.supersede is not None:
            details["supersede"] = plan.supersede
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
        if origin is None and checkout.trigger == "cli":  # a person asked for it too: no newer head cancels it
            await self._add_origin(job.id, Origin("person", job.repository, "push"))
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
