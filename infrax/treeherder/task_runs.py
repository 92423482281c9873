"""The runs of each reported partition, kept by the job master so that every message about a run
(and the queue API) carries all of its times: Treeherder overwrites a job's times with each
message, and a partition's status carries only its current run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus.messages import PartitionStatus, TaskStatus
from infrax.model import State, utcnow
from infrax.store import aware
from infrax.store.tables import tc_runs, tc_tasks
from infrax.store.upsert import upsert
from infrax.treeherder import queue_tasks as tc


@dataclass
class TcTask:
    partition_id: str
    job_id: str
    request_id: str
    task_id: str
    task_name: str
    idx: int
    count: int
    container_type: str
    created_at: datetime


@dataclass
class TcRun:
    partition_id: str
    run: int
    state: str
    reason_created: str
    scheduled: datetime
    reason_resolved: str | None = None
    worker_id: str | None = None
    log_url: str | None = None
    message: str | None = None
    started: datetime | None = None
    resolved: datetime | None = None

    @property
    def final(self) -> bool:
        return self.state in tc.FINAL_RUN_STATES


Event = tuple[str, TcRun]  # defined | pending | running | completed | failed | exception, and its run


def advance(runs: list[TcRun], status: PartitionStatus, now: datetime) -> tuple[list[Event], list[TcRun]]:
    """What one partition status does to the partition's runs: the events to announce, in order,
    and the runs changed (`runs` is updated in place). A repeat (a redelivery, `dispatched` after
    `queued`) announces nothing."""
    part = status.partition
    state = State(part.state)
    if state not in tc.RUN_STATE:
        return [], []
    by_number = {r.run: r for r in runs}
    events: list[Event] = []
    changed: list[TcRun] = []
    current = by_number.get(part.run)
    # A run the scheduler made to re-run failures counts in `failure_reruns`: the run before it
    # failed, and Taskcluster keeps such a run `failed` (with its log) and creates the next as a
    # `rerun`. Any other run before this one that never ended was lost: Taskcluster resolves it
    # `worker-shutdown` and creates the next as a `retry`, which Treeherder shows as retried.
    rerun = current is None and part.failure_reruns > sum(1 for r in runs if r.reason_created == "rerun")
    for earlier in runs:
        if earlier.run < part.run and not earlier.final:
            failed = rerun and earlier.run == part.run - 1
            earlier.state, earlier.reason_resolved = (
                ("failed", "failed") if failed else ("exception", "worker-shutdown")
            )
            earlier.resolved = aware(part.queued_at) or now
            if failed:  # Treeherder reads a failed run's start and worker as it does a finished one's
                earlier.started = earlier.started or earlier.resolved
                earlier.worker_id = earlier.worker_id or part.container_id
                earlier.log_url = earlier.log_url or part.log_url
            earlier.message = earlier.message or part.message  # why it runs again: lost, or what failed
            events.append((earlier.state, earlier))
            changed.append(earlier)
    if current is None:
        current = TcRun(
            part.id,
            part.run,
            "pending",
            "scheduled" if part.run == 0 else "rerun" if rerun else "retry",
            aware(part.queued_at) or now,
        )
        runs.append(current)
        runs.sort(key=lambda r: r.run)
        changed.append(current)
        if not by_number:
            events.append(("defined", current))
        events.append(("pending", current))
    if current.final:
        return events, changed
    wanted = tc.RUN_STATE[state]
    if wanted == "pending" or (wanted == current.state == "running"):
        return events, changed
    current.state = wanted
    current.worker_id = part.container_id or current.worker_id
    current.log_url = part.log_url or current.log_url
    current.started = aware(part.started_at) or current.started
    if wanted == "running":
        current.started = current.started or now
    else:
        current.reason_resolved = tc.REASON_RESOLVED[state]
        current.resolved = aware(part.finished_at) or now
        current.message = part.message
    if current not in changed:
        changed.append(current)
    events.append((wanted, current))
    return events, changed


async def task_of(conn: AsyncConnection, status: PartitionStatus, now: datetime) -> TcTask:
    part = status.partition
    row = (await conn.execute(select(tc_tasks).where(tc_tasks.c.partition_id == part.id))).mappings().first()
    if row is not None:
        return TcTask(**{**row, "created_at": aware(row["created_at"])})
    assert part.job_id is not None
    task = TcTask(
        part.id,
        part.job_id,
        part.request_id,
        part.task_id,
        status.task_name,
        part.index,
        part.count,
        part.container_type,
        aware(part.queued_at) or now,
    )
    await upsert(conn, tc_tasks, asdict(task), ["partition_id"])
    return task


async def runs_of(conn: AsyncConnection, partition_id: str) -> list[TcRun]:
    rows = (
        (await conn.execute(select(tc_runs).where(tc_runs.c.partition_id == partition_id).order_by(tc_runs.c.run)))
        .mappings()
        .all()
    )
    return [_run(row) for row in rows]


async def save(conn: AsyncConnection, runs: list[TcRun]) -> None:
    for run in runs:
        await upsert(conn, tc_runs, asdict(run), ["partition_id", "run"])


async def record(conn: AsyncConnection, status: PartitionStatus) -> tuple[TcTask, list[TcRun], list[Event]]:
    """The partition's task and runs after this status, and what to announce (in the caller's transaction)."""
    now = utcnow()
    task = await task_of(conn, status, now)
    runs = await runs_of(conn, task.partition_id)
    events, changed = advance(runs, status, now)
    await save(conn, changed)
    return task, runs, events


PLACEHOLDER_REASONS = {State.CANCELLED: "canceled", State.EXCEPTION: "internal-error"}


async def record_placeholder(
    conn: AsyncConnection, status: TaskStatus, container_tag: str
) -> tuple[TcTask, list[TcRun], list[Event]]:
    """The Taskcluster task standing for a dependent not planned yet (its id the infrax task's,
    `count` 0): pending while the task is, then resolved `exception` — `superseded` once its
    partitions are tasks of their own, `canceled` when a dependency failed. Treeherder's
    Taskcluster handler shows the first as a pending job and the second as `superseded` or
    `usercancel`, as it does for Taskcluster's own tasks."""
    now = status.timestamp
    row = (await conn.execute(select(tc_tasks).where(tc_tasks.c.partition_id == status.task_id))).mappings().first()
    if row is not None:
        task = TcTask(**{**row, "created_at": aware(row["created_at"])})
    else:
        assert status.job_id is not None
        task = TcTask(
            status.task_id, status.job_id, status.request_id, status.task_id, status.name, 0, 0, container_tag, now
        )
        await upsert(conn, tc_tasks, asdict(task), ["partition_id"])
    runs = await runs_of(conn, task.partition_id)
    events: list[Event] = []
    if status.state == State.PENDING:
        if not runs:
            runs.append(TcRun(task.partition_id, 0, "pending", "scheduled", now))
            events += [("defined", runs[0]), ("pending", runs[0])]
    elif runs and not runs[-1].final:
        run = runs[-1]
        run.state, run.resolved = "exception", now
        # It never runs, but Treeherder takes a job without a start to have started in 1970.
        run.started = run.started or now
        run.reason_resolved = PLACEHOLDER_REASONS.get(State(status.state), "superseded")
        run.message = status.message
        events.append(("exception", run))
    await save(conn, [run for _, run in events])
    return task, runs, events


async def task_by_partition(conn: AsyncConnection, partition_id: str) -> tuple[TcTask, list[TcRun]] | None:
    row = (await conn.execute(select(tc_tasks).where(tc_tasks.c.partition_id == partition_id))).mappings().first()
    if row is None:
        return None
    return TcTask(**{**row, "created_at": aware(row["created_at"])}), await runs_of(conn, partition_id)


def _run(row: Any) -> TcRun:
    values = dict(row)
    for key in ("scheduled", "started", "resolved"):
        values[key] = aware(values[key])
    return TcRun(**values)
