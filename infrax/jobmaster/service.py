"""The job master: a push becomes a job; the job follows its task request on the bus.

Pushes come from the CLI (`POST /api/v1/pushes`), from GitHub webhooks (`github.py`) and
from Mercurial pushes (`pushlog.py`); each trigger resolves its revision into a `Checkout`
and calls `start_job` (`push_intake.py`); `queries.py` answers about jobs. Reporting back goes
to GitHub (`statuses.py`) and Treeherder (`infrax.treeherder`), both driven by the bus.
"""

from __future__ import annotations

import asyncio
import logging
import re
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, insert, select, update
from sqlalchemy.exc import IntegrityError

from infrax.bus import Bus, Message, topics
from infrax.bus.messages import RequestStatus, TaskStatus
from infrax.executioner.client import ExecutionerPool
from infrax.http import ServiceError
from infrax.jobmaster.actions import JobActions, job_status
from infrax.jobmaster.github import GitHubWebhooks
from infrax.jobmaster.metrics import JobMasterMetrics
from infrax.jobmaster.mirrors import Mirrors
from infrax.jobmaster.plugin import ProjectLogic
from infrax.jobmaster.push_intake import JobPushes
from infrax.jobmaster.pushlog import HgPushes
from infrax.jobmaster.queries import JobQueries
from infrax.jobmaster.settings import JobMasterSettings
from infrax.jobmaster.statuses import CommitStatuses
from infrax.model import (
    FINAL_STATES,
    State,
    is_final,
    utcnow,
)
from infrax.outbox import Outbox
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database, aware
from infrax.store.tables import job_tasks, jobmaster_outbox, jobs
from infrax.treeherder.reporter import TreeherderReporter

log = logging.getLogger(__name__)

_SCP_URL = re.compile(r"^[\w.-]+@[\w.-]+:")


class JobMaster(JobPushes, JobQueries, JobActions):
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


async def _task_known(conn: Any, task_id: str) -> bool:
    return (await conn.execute(select(job_tasks.c.task_id).where(job_tasks.c.task_id == task_id))).first() is not None
