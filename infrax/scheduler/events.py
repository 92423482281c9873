"""The scheduler's messages: what it publishes about requests, tasks and partitions, and where."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from infrax.bus import topics
from infrax.bus.messages import BusMessage, PartitionStatus, RequestStatus, TaskStatus
from infrax.model import State, TaskPartition
from infrax.outbox import Outgoing


def outgoing(events: Iterable[BusMessage]) -> list[Outgoing]:
    """Each event with its exchange and routing key, as the outbox stores it."""
    return [(*address(event), event) for event in events]


def task_status(row: Any, state: State, previous: State | str | None, message: str | None = None) -> TaskStatus:
    return TaskStatus(
        task_id=row["id"],
        request_id=row["request_id"],
        job_id=row["job_id"],
        name=row["name"],
        state=state,
        previous_state=None if previous is None else State(previous),
        message=message,
    )


def request_status(
    request_id: str, job_id: str | None, state: State, previous: State | None, message: str | None = None
) -> RequestStatus:
    return RequestStatus(request_id=request_id, job_id=job_id, state=state, previous_state=previous, message=message)


def partition_status(
    part: TaskPartition, previous: State | str | None, task_name: str, request: Any
) -> PartitionStatus:
    return PartitionStatus(
        previous_state=None if previous is None else State(previous),
        task_name=task_name,
        project=request["project"],
        revision=request["revision"],
        partition=part,
    )


def address(event: BusMessage) -> tuple[str, str]:
    if isinstance(event, PartitionStatus):
        p = event.partition
        return topics.PARTITIONS, topics.routing_key(p.job_id, p.task_id, p.id, p.run, p.container_type, p.state)
    if isinstance(event, TaskStatus):
        return topics.TASKS, topics.routing_key(event.job_id, event.task_id, state=event.state)
    if isinstance(event, RequestStatus):
        return topics.REQUESTS, topics.routing_key(event.job_id, state=event.state)
    raise TypeError(f"the scheduler does not publish {type(event).__name__}")
