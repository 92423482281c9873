"""What each page shows, read from the components' REST APIs with the viewer's own token (so a page
shows what its viewer may read, as the API would answer them, and nothing more)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from markupsafe import Markup, escape

from infrax.executioner.client import ExecutionerClient
from infrax.failures import kind_of
from infrax.http import ServiceError
from infrax.jobmaster.client import JobMasterClient
from infrax.model import Job, State, TaskPartition, TaskRequest, is_final, run_id_of, utcnow
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler.client import SchedulerClient
from infrax.treeherder import queue_tasks as tc

PUSH_PAGE = 50
MAX_PUSH_PAGE = 1000
LOG_CHUNK = 256 * 1024  # bytes of log a page asks for at a time
FAILURE_KINDS = ("verdict", "raised", "traceback")
_STATES = frozenset(s.value for s in State)


@dataclass
class PushRow:
    job: Job
    author: str
    where: str  # branch, or pull request
    summary: dict[str, Any] | None  # a RequestSummary's JSON: chunks as [id, number, state, run]

    @classmethod
    def of(cls, job: Job, summary: dict[str, Any] | None = None) -> PushRow:
        return cls(job, str(job.details.get("author") or ""), where_from(job), summary)

    @property
    def age(self) -> str:
        return age(self.job.created_at)


@dataclass
class PartitionRow:
    part: TaskPartition

    @property
    def actual(self) -> float | None:
        p = self.part
        if p.started_at and p.finished_at:
            return (p.finished_at - p.started_at).total_seconds()
        if p.started_at and not is_final(p.state):
            return (utcnow() - p.started_at).total_seconds()
        return None

    @property
    def queue_place(self) -> str | None:
        """While queued: its place in its container type's queue and when it should start."""
        p = self.part
        if p.queue_position is None or p.expected_start is None:
            return None
        wait = max(0.0, (p.expected_start - utcnow()).total_seconds())
        return f"#{p.queue_position + 1} in the {p.container_type} queue, expected to start in {wait:.0f} s"


@dataclass
class LogChunk:
    lines: list[dict[str, Any]] = field(default_factory=list)
    offset: int = 0
    complete: bool = False
    first_line: int = 1


def age(when: datetime) -> str:
    seconds = max(0.0, (utcnow() - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return f"{int(seconds)} s ago"


def symbol(task_name: str) -> str:
    return tc.task_symbol(task_name)


def chunk_links(chunks: list[list[Any]]) -> Markup:
    """A task's partitions as links coloured by state, from the summary's `[id, number, state, run]`:
    a push list of a thousand jobs has twenty thousand, which a template's loop took a tenth of a
    second to write."""
    links = []
    for part_id, number, state, run in chunks:
        if not (part_id.isalnum() and state in _STATES):  # ids are hex, states known: nothing to escape
            part_id, state = escape(part_id), escape(state)
        since = f' data-run="{int(run)}"' if run else ""
        links.append(f'<a class="chunk s-{state}" href="/partitions/{part_id}"{since}>{int(number)}</a>')
    return Markup("".join(links))


def where_from(job: Job) -> str:
    origin = job.details.get("origin") or {}
    if origin.get("pullRequest"):
        return f"PR #{origin['pullRequest']}"
    return str(job.details.get("branch") or origin.get("ref") or "")


class Views:
    def __init__(
        self,
        jobmaster: JobMasterClient,
        scheduler: SchedulerClient,
        executioner: ExecutionerClient,
        provisioner: ProvisionerClient | None = None,
    ) -> None:
        self.jobmaster = jobmaster
        self.scheduler = scheduler
        self.executioner = executioner
        self.provisioner = provisioner

    async def queue(self, headers: dict[str, str]) -> list[dict[str, Any]]:
        """Each container type's queue, by project (the scheduler's `GET /api/v1/queue`)."""
        found: dict[str, Any] = await self.scheduler.call("GET", "/api/v1/queue", headers=headers)
        types: list[dict[str, Any]] = found["containerTypes"]
        return types

    async def workers(self, headers: dict[str, str]) -> list[dict[str, Any]]:
        """The workers of the provisioner's pools, as its API lists them (none without a provisioner)."""
        if self.provisioner is None:
            return []
        found: list[dict[str, Any]] = await self.provisioner.call("GET", "/api/v1/workers", headers=headers)
        return found

    async def jobs_page(
        self,
        headers: dict[str, str],
        *,
        project: str | None = None,
        state: str | None = None,
        author: str | None = None,
        limit: int = PUSH_PAGE,
        after: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """A page of the push list's jobs, newest first, and where the next page starts."""
        params: dict[str, Any] = {"limit": max(1, min(limit, MAX_PUSH_PAGE))}
        for key, value in (("project", project), ("state", state), ("after", after)):
            if value:
                params[key] = value
        found, following = await self.jobmaster.page("/api/v1/jobs", params, headers)
        jobs = [Job.model_validate(j) for j in found]
        if author:
            jobs = [j for j in jobs if author.lower() in str(j.details.get("author") or "").lower()]
        return jobs, following

    async def push_rows(self, headers: dict[str, str], jobs: list[Job]) -> list[PushRow]:
        """These jobs as rows of the push list, each with its request's tasks and chunks."""
        summaries = await self.scheduler.summaries([j.request_id for j in jobs if j.request_id], headers)
        return [PushRow.of(j, summaries.get(j.request_id or "")) for j in jobs]

    async def push_row(self, headers: dict[str, str], job_id: str) -> PushRow:
        job = Job.model_validate(await self.jobmaster.call("GET", f"/api/v1/jobs/{job_id}", headers=headers))
        return (await self.push_rows(headers, [job]))[0]

    async def job(self, headers: dict[str, str], job_id: str) -> tuple[Job, TaskRequest | None, list[str]]:
        job = Job.model_validate(await self.jobmaster.call("GET", f"/api/v1/jobs/{job_id}", headers=headers))
        request = None
        if job.request_id:
            request = TaskRequest.model_validate(
                await self.scheduler.call("GET", f"/api/v1/task-requests/{job.request_id}", headers=headers)
            )
        return job, request, list(job.details.get("previousRequests") or [])

    async def partition(self, headers: dict[str, str], partition_id: str) -> tuple[TaskPartition, str, Job | None]:
        part = TaskPartition.model_validate(
            await self.scheduler.call("GET", f"/api/v1/partitions/{partition_id}", headers=headers)
        )
        task = await self.scheduler.call("GET", f"/api/v1/tasks/{part.task_id}", headers=headers)
        job = None
        if part.job_id:
            job = Job.model_validate(await self.jobmaster.call("GET", f"/api/v1/jobs/{part.job_id}", headers=headers))
        return part, str(task["name"]), job

    async def tests(self, headers: dict[str, str], partition_id: str, run: int) -> list[dict[str, Any]]:
        """The run's results per test, failing ones first (none when it left no report, or when they
        cannot be read now: the page shows the rest)."""
        try:
            found = await self.executioner.call(
                "GET", f"/api/v1/partitions/{partition_id}/tests", params={"run": run, "limit": 1000}, headers=headers
            )
        except ServiceError:
            return []
        return sorted(found, key=lambda t: (t["outcome"] not in ("failed", "error"), t["outcome"] != "skipped"))

    async def log(self, headers: dict[str, str], partition_id: str, run: int, offset: int, line: int) -> LogChunk:
        """Whole lines of the run's log from byte `offset` (line `line`), each with its failure kind;
        a line not yet ended waits for the next read, so no line or character is cut in two."""
        response = await self.executioner.send(
            "GET",
            f"/api/v1/runs/{run_id_of(partition_id, run)}/log",
            params={"offset": offset, "limit": LOG_CHUNK},
            headers=headers,
        )
        data = response.content
        ended = response.headers.get("X-Log-Complete") == "true"
        end = len(data) if ended else data.rfind(b"\n") + 1
        if end == 0 and len(data) >= LOG_CHUNK:  # one line longer than a chunk: shown in pieces
            end = len(data)
        text = data[:end].decode("utf-8", errors="replace")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        chunk = LogChunk(offset=offset + end, complete=ended and end == len(data), first_line=line)
        for n, content in enumerate(lines, line):
            kind = kind_of(content)
            chunk.lines.append({"n": n, "text": content, "kind": None if kind is None else FAILURE_KINDS[kind]})
        return chunk

    async def action(self, headers: dict[str, str], job_id: str, what: str) -> Job:
        path = {
            "cancel": f"/api/v1/jobs/{job_id}/cancel",
            "rerun": f"/api/v1/jobs/{job_id}/rerun",
            "rerun-failed": f"/api/v1/jobs/{job_id}/rerun?failed=true",
        }[what]
        return Job.model_validate(await self.jobmaster.call("POST", path, headers=headers))
