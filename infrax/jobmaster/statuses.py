"""Commit statuses back to GitHub: the state of every job that came from a GitHub webhook.

For each state change of such a job (on `exchange/infrax/v1/job-status`) the job master posts,
once per repository the job came from:

    POST {github_api_url}/repos/{owner}/{repo}/statuses/{sha}
    Accept: application/vnd.github+json
    X-GitHub-Api-Version: 2022-11-28
    Authorization: Bearer {github_token}            (when one is configured)

    {"state": "pending" | "success" | "failure" | "error",
     "target_url": "{job master URL}/api/v1/jobs/{jobId}",
     "description": "<at most 140 characters>",
     "context": "infrax/{project}"}

Posts go through a queue in the store (`jobmaster_commit_statuses`): one row per job and
repository holding the newest body, so a restart loses none and a job's older states are not
posted once a newer one is due. A post GitHub refuses for the moment (no answer, 5xx, 429) is tried
again with backoff (`github_status_backoff`, doubled up to 5 minutes) until `github_status_deadline`
(6 hours) has passed; one it refuses for good (another 4xx) is logged and dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import delete, select, update

from infrax.background import BackgroundTasks
from infrax.bus import Message, Subscription, topics
from infrax.bus.messages import JobStatus
from infrax.model import Job, State, utcnow
from infrax.retry import delay, outage
from infrax.store import StoreError, aware
from infrax.store.tables import commit_statuses
from infrax.store.upsert import upsert

if TYPE_CHECKING:
    from infrax.jobmaster.service import JobMaster

log = logging.getLogger(__name__)

GITHUB_STATE = {
    State.PENDING: "pending",
    State.QUEUED: "pending",
    State.DISPATCHED: "pending",
    State.RUNNING: "pending",
    State.COMPLETED: "success",
    State.SKIPPED: "success",
    State.FAILED: "failure",
    State.EXCEPTION: "error",
    State.CANCELLED: "error",
}
_REPOSITORY = re.compile(r"^[\w.-]+/[\w.-]+$")
_REMEMBERED = 10_000
MAX_BACKOFF = 300.0


class CommitStatuses:
    def __init__(
        self,
        jobmaster: JobMaster,
        api_url: str,
        token: str | None,
        http: httpx.AsyncClient | None = None,
        *,
        deadline: float = 6 * 3600.0,
        backoff: float = 1.0,
    ) -> None:
        self.jobmaster = jobmaster
        self.http = http or httpx.AsyncClient(base_url=api_url.rstrip("/"), timeout=10)
        self.headers = {
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
            "User-Agent": "infrax-jobmaster",
        }
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.deadline = deadline
        self.backoff = backoff
        self._sent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = asyncio.Lock()
        self._due = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._background = BackgroundTasks()
        self._github = outage("GitHub")

    async def subscribe(self) -> Subscription:
        self._sender = asyncio.create_task(self._send_loop(), name="github-statuses")
        # One at a time, so a job's statuses are queued in the order its states changed.
        return await self.jobmaster.bus.subscribe(
            "jobmaster-github-statuses", topics.JOBS, ["#"], self._on_job_status, prefetch=1
        )

    async def close(self) -> None:
        if self._sender is not None:
            self._sender.cancel()
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._background.cancel()
        await self.http.aclose()

    def report_soon(self, job_id: str) -> None:
        """`report` without making the caller (a webhook answer) wait for the store."""
        self._background.spawn(self._report_logged(job_id), name=f"github-status-{job_id}")

    async def _report_logged(self, job_id: str) -> None:
        try:
            await self.report(job_id)
        except Exception:
            log.exception("commit status of job %s not queued", job_id)

    async def _on_job_status(self, message: Message) -> None:
        await self.report(JobStatus.model_validate(message.body).job_id)

    async def report(self, job_id: str) -> None:
        """Queue the job's current state for each GitHub repository it came from (unless just posted)."""
        origins = await self.jobmaster.origins(job_id, "github")
        if not origins:
            return
        job = await self.jobmaster.get(job_id)
        body = status_body(job, self.jobmaster.job_page(job.id))
        now = utcnow()
        rows = [
            {
                "job_id": job_id,
                "repository": repository,
                "sha": job.revision,
                "body": body,
                "attempts": 0,
                "next_attempt_at": now,
                "deadline_at": now + timedelta(seconds=self.deadline),
                "last_error": None,
            }
            for repository in dict.fromkeys(o["repository"] for o in origins)
            if self._sent.get((job_id, repository)) != body
        ]
        if not rows:
            return
        async with self.jobmaster.db.begin() as conn:
            for row in rows:
                await upsert(conn, commit_statuses, row, ("job_id", "repository"))
        self._due.set()

    async def _send_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._due.wait(), 1.0)
            self._due.clear()
            try:
                while await self.send_due():
                    pass
            except StoreError as error:
                outage("the database").failed(error)
            except Exception:
                log.exception("posting commit statuses failed")

    async def send_due(self) -> bool:
        """Post the statuses whose time has come; True when more may be due."""
        async with self._lock:
            async with self.jobmaster.db.begin() as conn:
                due = (
                    (
                        await conn.execute(
                            select(commit_statuses)
                            .where(commit_statuses.c.next_attempt_at <= utcnow())
                            .order_by(commit_statuses.c.next_attempt_at)
                            .limit(50)
                        )
                    )
                    .mappings()
                    .all()
                )
            for row in due:
                await self._send(dict(row))
            return len(due) == 50

    async def _send(self, row: dict[str, Any]) -> None:
        key, body = (row["job_id"], row["repository"]), row["body"]
        error, retryable = await self._post(row["repository"], row["sha"], body)
        now = utcnow()
        # The row as read: a newer state queued meanwhile (a new deadline) is left for the next round.
        done = (
            commit_statuses.c.job_id == key[0],
            commit_statuses.c.repository == key[1],
            commit_statuses.c.deadline_at == row["deadline_at"],
        )
        async with self.jobmaster.db.begin() as conn:
            if error is None:
                self._github.recovered()
                self._sent[key] = body
                self._sent.move_to_end(key)
                while len(self._sent) > _REMEMBERED:
                    self._sent.popitem(last=False)
                await conn.execute(delete(commit_statuses).where(*done))
            elif not retryable or aware(row["deadline_at"]) <= now:
                why = "refused" if not retryable else f"still failing after {self.deadline:g} s"
                log.warning(
                    "commit status %s for %s@%s dropped (%s): %s",
                    body["state"],
                    row["repository"],
                    row["sha"][:12],
                    why,
                    error,
                )
                await conn.execute(delete(commit_statuses).where(*done))
            else:
                self._github.failed(RuntimeError(error))
                wait = delay(row["attempts"], self.backoff, MAX_BACKOFF)
                await conn.execute(
                    update(commit_statuses)
                    .where(*done)
                    .values(
                        attempts=row["attempts"] + 1,
                        next_attempt_at=now + timedelta(seconds=wait),
                        last_error=error[:1000],
                    )
                )

    async def _post(self, repository: str, sha: str, body: dict[str, Any]) -> tuple[str | None, bool]:
        """(None, _) once posted; else the error and whether trying again may help."""
        if not _REPOSITORY.match(repository):
            return f"{repository!r} is not an owner/name", False
        try:
            response = await self.http.post(f"/repos/{repository}/statuses/{sha}", json=body, headers=self.headers)
        except httpx.HTTPError as e:
            return repr(e), True
        if response.status_code < 300:
            return None, False
        return (
            f"{response.status_code} {response.text[:200]}",
            response.status_code >= 500 or response.status_code == 429,
        )


def status_body(job: Job, target_url: str) -> dict[str, Any]:
    """The commit status; its "Details" link (`target_url`) is the job's page."""
    state = State(job.state)
    failed = [t.name for t in job.tasks if t.state == State.FAILED]
    description = {
        State.PENDING: "waiting for its tasks to be planned",
        State.QUEUED: "queued",
        State.DISPATCHED: "starting",
        State.RUNNING: "running",
        State.COMPLETED: "all tasks passed" if job.tasks or job.message != "no tasks to run" else "no tasks to run",
        State.SKIPPED: "nothing to run",
        # What failed first (`infrax.failures`: "task unit: partition 2/3: exited with code 1: FAILED …").
        State.FAILED: "failed: " + (job.message or ", ".join(sorted(failed)) or "a task failed"),
        State.EXCEPTION: "infrastructure error: " + (job.message or "a task could not be run"),
        State.CANCELLED: "cancelled" + (f": {job.message}" if job.message and job.message != "cancelled" else ""),
    }[state]
    return {
        "state": GITHUB_STATE[state],
        "target_url": target_url,
        "description": description[:140],
        "context": f"infrax/{job.project}",
    }
