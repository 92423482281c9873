"""What a run's news does to its partition, and how partitions add up to tasks and requests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus.messages import BusMessage, RunStatus
from infrax.model import State, TaskDefinition, run_id_of, utcnow
from infrax.scheduler.aggregate import aggregate
from infrax.scheduler.events import request_status, task_status
from infrax.scheduler.graph import release_dependents
from infrax.store.tables import partitions, requests, tasks

MUTABLE = (
    "state",
    "failure_reruns",
    "rerun_tests",
    "avoid_container",
    "intermittent",
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


@dataclass(frozen=True)
class RunPolicy:
    """What a task's definition (or the installation, where it says nothing) allows its partitions."""

    retries: int  # re-runs after an infrastructure loss
    rerun_failures: int  # re-runs of what failed
    intermittent_fails: bool  # a partition whose failures all passed when run again ends failed

    @classmethod
    def of(cls, definition: TaskDefinition, rerun_failures: int, intermittent_fails: bool) -> RunPolicy:
        return cls(
            retries=definition.retries,
            rerun_failures=rerun_failures if definition.rerun_failures is None else definition.rerun_failures,
            intermittent_fails=intermittent_fails
            if definition.intermittent is None
            else definition.intermittent == "fail",
        )


def transition(row: dict[str, Any], status: RunStatus, policy: RunPolicy) -> dict[str, Any] | None:
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
        if row["run"] < policy.retries:
            return {
                **common,
                **_next_run(row, status),
                "message": f"run {row['run']} lost ({status.message}); re-queued as run {row['run'] + 1}",
            }
        return {**common, "state": State.EXCEPTION, "message": f"{status.message} (retries used up: {policy.retries})"}
    started = row["started_at"] or status.timestamp
    if status.state == "failed":
        return _failed(row, status, policy, {**common, "started_at": started})
    if status.state == "completed" and row["failure_reruns"]:
        return _passed_again(row, policy, {**common, "started_at": started})
    return {**common, "state": State(status.state), "started_at": started}


def _next_run(row: dict[str, Any], status: RunStatus) -> dict[str, Any]:
    return {
        "state": State.QUEUED,
        "run": row["run"] + 1,
        "queued_at": status.timestamp,
        "started_at": None,
        "finished_at": None,
        "dispatched_at": None,
        "exit_code": None,
    }


def _failed(row: dict[str, Any], status: RunStatus, policy: RunPolicy, ended: dict[str, Any]) -> dict[str, Any]:
    """A failed run: what failed runs again, on another container, while re-runs last; else the
    partition failed, with what failed then passed on the way."""
    # What was run again and did not fail this time passed on its re-run.
    earlier = row["rerun_tests"]
    recovered = [t for t in earlier if t not in set(status.failing)] if earlier and status.failing else []
    intermittent = _merged(row["intermittent"], recovered)
    known_flaky = status.known_intermittent and row["failure_reruns"] <= policy.rerun_failures
    if row["failure_reruns"] < policy.rerun_failures or known_flaky:
        what = f"its {len(status.failing)} failing tests" if status.failing else "all of it"
        if known_flaky and row["failure_reruns"] >= policy.rerun_failures:
            what += " (known intermittent)"
        return {
            **ended,
            **_next_run(row, status),
            "failure_reruns": row["failure_reruns"] + 1,
            "rerun_tests": status.failing,
            "avoid_container": status.container_id,
            "intermittent": intermittent,
            "message": f"run {row['run']} failed ({status.message or 'no message'}); {what} run again as "
            f"run {row['run'] + 1}, on another container",
        }
    again = f" (the same on {row['failure_reruns']} re-runs)" if row["failure_reruns"] else ""
    flaky = f"; intermittent: {_listed(intermittent)}" if intermittent else ""
    return {
        **ended,
        "state": State.FAILED,
        "intermittent": intermittent,
        "message": f"{status.message or 'failed'}{again}{flaky}",
    }


def _passed_again(row: dict[str, Any], policy: RunPolicy, ended: dict[str, Any]) -> dict[str, Any]:
    """A re-run of failures that passed: what it ran failed, then passed."""
    intermittent = _merged(row["intermittent"], row["rerun_tests"] or row["files"])
    text = f"intermittent: {_listed(intermittent or [])} failed, then passed on run {row['run']}"
    if policy.intermittent_fails:
        return {**ended, "state": State.FAILED, "intermittent": intermittent, "message": f"{text} (counted as failed)"}
    return {**ended, "state": State.COMPLETED, "intermittent": intermittent, "message": text}


def _merged(known: list[str] | None, more: list[str]) -> list[str] | None:
    merged = list(dict.fromkeys([*(known or []), *more]))
    return merged or None


def _listed(names: list[str], shown: int = 3) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


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
    if state in FAILURE_STATES or state == State.COMPLETED:
        # Its first failed task's message; a passing request's, its first task's that passed with
        # intermittent failures.
        said = (
            await conn.execute(
                select(tasks.c.name, tasks.c.message)
                .where(
                    tasks.c.request_id == request_id,
                    tasks.c.state == state,
                    *([tasks.c.message.is_not(None)] if state == State.COMPLETED else []),
                )
                .order_by(tasks.c.position)
                .limit(1)
            )
        ).first()
        if said is not None:
            message = f"task {said.name}" + (f": {said.message}" if said.message else "")
    await conn.execute(
        update(requests).where(requests.c.id == request_id).values(state=state, message=message, updated_at=utcnow())
    )
    return [request_status(request_id, row["job_id"], state, row["state"], message)]


FAILURE_STATES = (State.FAILED, State.EXCEPTION)


async def _first_failure(conn: AsyncConnection, task_id: str, state: State) -> str | None:
    """What a task that ended `failed` or `exception` says: its first such partition's message
    (which carries the run's failure lines, `infrax.failures`); one that completed, its first
    partition's that passed only when its failures ran again (intermittent)."""
    if state not in FAILURE_STATES and state != State.COMPLETED:
        return None
    flaky = [partitions.c.intermittent.is_not(None)] if state == State.COMPLETED else []
    first = (
        await conn.execute(
            select(partitions.c.idx, partitions.c.count, partitions.c.message)
            .where(partitions.c.task_id == task_id, partitions.c.state == state, *flaky)
            .order_by(partitions.c.idx)
            .limit(1)
        )
    ).first()
    if first is None:
        return None
    return f"partition {first.idx}/{first.count}" + (f": {first.message}" if first.message else "")
