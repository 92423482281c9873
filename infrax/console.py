"""What the CLI shows a person: live progress of a job and its final table."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infrax.executioner.client import ExecutionerClient
from infrax.http import ServiceError
from infrax.jobmaster.client import JobMasterClient
from infrax.model import Job, State, TaskPartition, TaskRequest, is_final, run_id_of, utcnow
from infrax.scheduler.client import SchedulerClient

STATE_STYLE = {
    "pending": "dim",
    "queued": "yellow",
    "dispatched": "cyan",
    "running": "blue",
    "completed": "green",
    "failed": "bold red",
    "exception": "bold magenta",
    "cancelled": "dim",
    "skipped": "dim",
    "passed": "green",  # a test's outcomes
    "error": "bold magenta",
    "intermittent": "bold yellow",
}


def styled(state: str) -> Text:
    return Text(state, style=STATE_STYLE.get(state, ""))


@dataclass
class Clients:
    jobmaster: JobMasterClient
    scheduler: SchedulerClient
    executioner: ExecutionerClient


def job_table(job: Job, request: TaskRequest | None) -> Table:
    table = Table(
        title=f"job {job.id[:12]}  {job.project}@{job.revision[:12]}  ",
        title_justify="left",
        caption=Text.assemble("job: ", styled(job.state), f"  {job.message or ''}", *_selections(request)),
        caption_justify="left",
    )
    for column in ("task", "chunk", "partition id", "files", "state", "run", "exit", "time", "log"):
        table.add_column(column, overflow="fold")
    if request is None:
        return table
    for task in request.tasks:
        needs = task.definition.depends_on
        label = f"{task.name} ← {', '.join(needs)}" if needs else task.name
        if not task.partitions:
            waiting = f"waits for {', '.join(needs)}" if needs and task.state == State.PENDING else ""
            table.add_row(label, "-", "-", "-", styled(task.state), "", "", "", task.message or waiting)
        for n, part in enumerate(task.partitions):
            table.add_row(
                label if n == 0 else task.name,
                f"{part.index}/{part.count}",
                part.id[:12],
                _files(part),
                Text.assemble(styled(part.state), (" intermittent", "bold yellow"))
                if part.intermittent
                else styled(part.state),
                str(part.run),
                "" if part.exit_code is None else str(part.exit_code),
                _elapsed(part),
                part.log_url or "",
            )
    return table


def _selections(request: TaskRequest | None) -> list[str]:
    """What each task's file patterns took: a pattern that took little is seen before it costs a green job."""
    lines = []
    for task in request.tasks if request else []:
        patterns = task.definition.file_patterns
        if patterns is not None:
            counts = ", ".join(f"{pattern} {n}" for pattern, n in patterns.items())
            lines.append(f"\n{task.name}: {len(task.definition.files)} files ({counts})")
    return lines


def _files(part: TaskPartition) -> str:
    if len(part.files) <= 2:
        return ", ".join(part.files)
    return f"{part.files[0]} … ({len(part.files)} files)"


def _elapsed(part: TaskPartition) -> str:
    """How long it ran; while queued, its place in the queue and when it should start."""
    if part.started_at and part.finished_at:
        return f"{(part.finished_at - part.started_at).total_seconds():.1f}s"
    if part.queue_position is not None and part.expected_start is not None:
        wait = max(0.0, (part.expected_start - utcnow()).total_seconds())
        return f"#{part.queue_position + 1}, starts in ~{wait:.0f}s"
    return ""


async def watch_job(
    clients: Clients, job_id: str, console: Console, timeout: float = 600.0, live: bool = True
) -> tuple[Job, TaskRequest | None]:
    """Follow a job until it ends, redrawing its table; returns the final job and its request."""
    deadline = time.monotonic() + timeout
    job, request = await _snapshot(clients, job_id)
    with Live(
        job_table(job, request), console=console, refresh_per_second=8, transient=False, auto_refresh=live
    ) as view:
        while not (is_final(job.state) and (request is None or is_final(request.state))):
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:.0f}s")
            await asyncio.sleep(0.2)
            job, request = await _snapshot(clients, job_id)
            view.update(job_table(job, request))
    console.print()
    return job, request


async def _snapshot(clients: Clients, job_id: str) -> tuple[Job, TaskRequest | None]:
    job = await clients.jobmaster.get(job_id)
    request = await clients.scheduler.get_request(job.request_id) if job.request_id else None
    return job, request


async def log_tail(clients: Clients, part: TaskPartition, lines: int = 15) -> str:
    try:
        text, _, _ = await clients.executioner.log(run_id_of(part.id, part.run))
    except ServiceError as error:
        return f"(log unavailable: {error})"
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


async def show_failures(clients: Clients, request: TaskRequest, console: Console) -> None:
    for task in request.tasks:
        for part in task.partitions:
            if part.state in ("failed", "exception"):
                console.rule(
                    f"[red]{task.name} {part.index}/{part.count} ({part.id[:12]}) {part.state}: {part.message or ''}"
                )
                console.print(await log_tail(clients, part), markup=False, highlight=False)
