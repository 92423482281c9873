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

A post that fails is tried three times, then logged and dropped: the next change posts the
job's state again, since each post carries the job's current state, not the message's.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import httpx

from infrax.background import BackgroundTasks
from infrax.bus import Message, Subscription, topics
from infrax.bus.messages import JobStatus
from infrax.model import Job, State

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


class CommitStatuses:
    def __init__(
        self,
        jobmaster: JobMaster,
        api_url: str,
        token: str | None,
        http: httpx.AsyncClient | None = None,
        attempts: int = 3,
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
        self.attempts = attempts
        self._sent: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._lock = asyncio.Lock()
        self._background = BackgroundTasks()

    async def subscribe(self) -> Subscription:
        # One at a time, so a job's statuses reach GitHub in the order its states changed.
        return await self.jobmaster.bus.subscribe(
            "jobmaster-github-statuses", topics.JOBS, ["#"], self._on_job_status, prefetch=1
        )

    async def close(self) -> None:
        await self._background.cancel()
        await self.http.aclose()

    def report_soon(self, job_id: str) -> None:
        """`report` without making the caller (a webhook answer) wait for GitHub."""
        self._background.spawn(self._report_logged(job_id), name=f"github-status-{job_id}")

    async def _report_logged(self, job_id: str) -> None:
        try:
            await self.report(job_id)
        except Exception:
            log.exception("commit status of job %s not posted", job_id)

    async def _on_job_status(self, message: Message) -> None:
        await self.report(JobStatus.model_validate(message.body).job_id)

    async def report(self, job_id: str) -> None:
        """Post the job's current state to each GitHub repository it came from (unless just posted)."""
        origins = await self.jobmaster.origins(job_id, "github")
        if not origins:
            return
        async with self._lock:
            job = await self.jobmaster.get(job_id)
            body = status_body(job, self.jobmaster.public_url)
            for repository in dict.fromkeys(o["repository"] for o in origins):
                key = (job_id, repository)
                if self._sent.get(key) == body:
                    continue
                if await self._post(repository, job.revision, body):
                    self._sent[key] = body
                    self._sent.move_to_end(key)
                    while len(self._sent) > _REMEMBERED:
                        self._sent.popitem(last=False)

    async def _post(self, repository: str, sha: str, body: dict[str, Any]) -> bool:
        if not _REPOSITORY.match(repository):
            log.warning("not posting a commit status to %r: not an owner/name", repository)
            return False
        error = ""
        for attempt in range(self.attempts):
            try:
                response = await self.http.post(f"/repos/{repository}/statuses/{sha}", json=body, headers=self.headers)
            except httpx.HTTPError as e:
                error = repr(e)
            else:
                if response.status_code < 300:
                    return True
                error = f"{response.status_code} {response.text[:200]}"
                if response.status_code < 500 and response.status_code != 429:
                    break  # refused: asking again changes nothing
            if attempt + 1 < self.attempts:
                await asyncio.sleep(0.5 * 2**attempt)
        log.warning("commit status %s for %s@%s not posted: %s", body["state"], repository, sha[:12], error)
        return False


def status_body(job: Job, public_url: str) -> dict[str, Any]:
    state = State(job.state)
    failed = [t.name for t in job.tasks if t.state == State.FAILED]
    description = {
        State.PENDING: "waiting for its tasks to be planned",
        State.QUEUED: "queued",
        State.DISPATCHED: "starting",
        State.RUNNING: "running",
        State.COMPLETED: "all tasks passed" if job.tasks or job.message != "no tasks to run" else "no tasks to run",
        State.SKIPPED: "nothing to run",
        State.FAILED: "failed: " + (", ".join(sorted(failed)) if failed else job.message or "a task failed"),
        State.EXCEPTION: "infrastructure error: " + (job.message or "a task could not be run"),
        State.CANCELLED: "cancelled",
    }[state]
    return {
        "state": GITHUB_STATE[state],
        "target_url": f"{public_url}/api/v1/jobs/{job.id}",
        "description": description[:140],
        "context": f"infrax/{job.project}",
    }
