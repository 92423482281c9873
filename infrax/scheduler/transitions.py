"""What a run's news does to its partition, and how partitions add up to tasks and requests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus.messages import BusMessage, RunStatus
from infrax.model import State, run_id_of, utcnow
from infrax.scheduler.aggregate import aggregate
from infrax.scheduler.events import request_status, task_status
from infrax.scheduler.graph import release_dependents
from infrax.store.tables import partitions, requests, tasks

MUTABLE = (
    "state",
    "run",
    "exit_code",
    "message",
    "log_url",
    "container_id",
    "queued_at",
    "started_at",
    "finished_at",
    "claimed_by",
    "dispatched_at",
)
# One statement for a whole batch of partition changes (executemany).
UPDATE_PARTITION = (
    update(partitions).where(partitions.c.id == bindparam("b_id")).values({k: bindparam(f"b_{k}") for k in MUTABLE})
)


def transition(row: dict[str, Any], status: RunStatus, retries: int) -> dict[str, Any] | None:
    """What a run's news does to its partition; None when it changes nothing."""
    if status.state == "running":
        if row["state"] == State.RUNNING:
            return None
        return {
            "state": State.RUNNING,
            "started_at": status.timestamp,
            "container_id": status.container_id,
            "log_url": status.log_url,
        }
    common = {
        "exit_code": status.exit_code,
        "message": status.message,
        "log_url": status.log_url or row["log_url"],
        "container_id": status.container_id or row["container_id"],
        "finished_at": status.timestamp,
        "claimed_by": None,
    }
    if status.state == "exception":
        if row["run"] < retries:
            return {
                **common,
                "state": State.QUEUED,
                "run": row["run"] + 1,
                "queued_at": status.timestamp,
                "message": f"run {row['run']} lost ({status.message}); re-queued as run {row['run'] + 1}",
                "started_at": None,
                "finished_at": None,
                "dispatched_at": None,
                "exit_code": None,
            }
        return {**common, "state": State.EXCEPTION, "message": f"{status.message} (retries used up: {retries})"}
    started = row["started_at"] or status.timestamp
    return {**common, "state": State(status.state), "started_at": started}


def lost(row: Any, why: str) -> RunStatus:
    return RunStatus(
        run_id=run_id_of(row["id"], row["run"]),
        partition_id=row["id"],
        task_id=row["task_id"],
        request_id=row["request_id"],
        job_id=row["job_id"],
        run=row["run"],
        container_type=row["container_type"],
        state="exception",
        message=why,
    )


def request_state(task_states: Iterable[str]) -> State:
    states = [State.COMPLETED if s == State.SKIPPED else s for s in task_states]
    return aggregate(states)


async def settle_tasks(conn: AsyncConnection, task_ids: Iterable[str]) -> tuple[list[BusMessage], int]:
    """Recompute each task from its partitions and each touched request from its tasks (its
    dependents released or cancelled on the way); the messages, and how many dependents became
    ready to plan."""
    task_ids = list(task_ids)
    if not task_ids:
        return [], 0
    events: list[BusMessage] = []
    task_rows = (
        (await conn.execute(select(tasks).where(tasks.c.id.in_(task_ids)).order_by(tasks.c.id).with_for_update()))
        .mappings()
        .all()
    )
    part_states: dict[str, list[str]] = {t: [] for t in task_ids}
    # Which states occur is all that aggregation needs, not how often.
    for task_id, state in (
        await conn.execute(
            select(partitions.c.task_id, partitions.c.state).where(partitions.c.task_id.in_(task_ids)).distinct()
        )
    ).all():
        part_states[task_id].append(state)
    request_ids = set()
    for task_row in task_rows:
        if task_row["state"] == State.CANCELLED:
            continue
        state = aggregate(part_states[task_row["id"]], empty=State(task_row["state"]))
        if state != task_row["state"]:
            message = await _first_failure(conn, task_row["id"], state)
            await conn.execute(update(tasks).where(tasks.c.id == task_row["id"]).values(state=state, message=message))
            events.append(task_status(task_row, state, task_row["state"], message))
            request_ids.add(task_row["request_id"])
    ready = 0
    for request_id in sorted(request_ids):
        released, now_ready = await release_dependents(conn, request_id)
        events += released
        ready += now_ready
        events += await settle_request(conn, request_id)
    return events, ready


async def settle_request(conn: AsyncConnection, request_id: str) -> list[BusMessage]:
    row = (await conn.execute(select(requests).where(requests.c.id == request_id).with_for_update())).mappings().one()
    states = (await conn.execute(select(tasks.c.state).where(tasks.c.request_id == request_id))).scalars().all()
    state = request_state(states)
    if state == row["state"] or row["state"] == State.CANCELLED:
        return []
    message = None
    if state in FAILURE_STATES:
        failed = (
            await conn.execute(
                select(tasks.c.name, tasks.c.message)
                .where(tasks.c.request_id == request_id, tasks.c.state == state)
                .order_by(tasks.c.position)
                .limit(1)
            )
        ).first()
        if failed is not None:
            message = f"task {failed.name}" + (f": {failed.message}" if failed.message else "")
    await conn.execute(
        update(requests).where(requests.c.id == request_id).values(state=state, message=message, updated_at=utcnow())
    )
    return [request_status(request_id, row["job_id"], state, row["state"], message)]


FAILURE_STATES = (State.FAILED, State.EXCEPTION)


async def _first_failure(conn: AsyncConnection, task_id: str, state: State) -> str | None:
    """What a task that ended `failed` or `exception` says: its first such partition's message
    (which carries the run's failure lines, `infrax.failures`)."""
    if state not in FAILURE_STATES:
        return None
    first = (
        await conn.execute(
            select(partitions.c.idx, partitions.c.count, partitions.c.message)
            .where(partitions.c.task_id == task_id, partitions.c.state == state)
            .order_by(partitions.c.idx)
            .limit(1)
        )
    ).first()
    if first is None:
        return None
    return f"partition {first.idx}/{first.count}" + (f": {first.message}" if first.message else "")
