"""Bodies of bus messages (version 1). Each has a JSON Schema in infrax/schemas/bus/v1/."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from infrax.model import MAX_RERUN_TESTS, WIRE_VERSION, State, TaskPartition, WireModel, utcnow


class BusMessage(WireModel):
    version: Literal[1] = WIRE_VERSION
    timestamp: datetime = Field(default_factory=utcnow)


class RunStatus(BusMessage):
    """What happened to one run of a partition, from whoever saw it happen."""

    kind: Literal["run-status"] = "run-status"
    run_id: str
    partition_id: str
    task_id: str
    request_id: str
    job_id: str | None
    run: int
    container_type: str
    container_id: str | None = None
    state: Literal["running", "completed", "failed", "exception", "cancelled"]
    exit_code: int | None = None
    message: str | None = None
    log_url: str | None = None
    duration: float | None = None
    file_durations: dict[str, float] | None = None
    checkout_seconds: float | None = Field(default=None, description="of `duration`, the checkout's share")
    failing: list[str] | None = Field(
        default=None,
        max_length=MAX_RERUN_TESTS,
        description="what failed, as a re-run would name it: the failing tests' ids where a runner takes them "
        "as arguments (pytest's `file::test`), else their files; none when the run reported no tests",
    )
    known_intermittent: bool = Field(
        default=False, description="every failing test failed and then passed on a re-run in the last 30 days"
    )


class PartitionStatus(BusMessage):
    kind: Literal["partition-status"] = "partition-status"
    previous_state: State | None
    task_name: str
    project: str
    revision: str | None
    partition: TaskPartition
    # On a final state, what the run measured: its own time and the bootstrapper's per-file times.
    duration: float | None = None
    file_durations: dict[str, float] | None = None
    checkout_seconds: float | None = Field(default=None, description="of `duration`, the checkout's share")


class TaskStatus(BusMessage):
    kind: Literal["task-status"] = "task-status"
    task_id: str
    request_id: str
    job_id: str | None
    name: str
    state: State
    previous_state: State | None
    message: str | None = None


class RequestStatus(BusMessage):
    kind: Literal["task-request-status"] = "task-request-status"
    request_id: str
    job_id: str | None
    state: State
    previous_state: State | None
    message: str | None = None


class ContainerEvent(BusMessage):
    kind: Literal["container-event"] = "container-event"
    event: Literal["free", "started", "stopped", "lost"]
    container_type: str
    container_id: str | None = None  # the container, when the event is about one
    # How many containers of the type the event is about: "free" events are coalesced.
    count: int = Field(default=1, ge=1)
    start_seconds: float | None = Field(
        default=None, ge=0, description='"started": how long the container took to start and answer'
    )


class JobStatus(BusMessage):
    kind: Literal["job-status"] = "job-status"
    job_id: str
    project: str
    revision: str
    state: State
    previous_state: State | None
    message: str | None = None


BUS_MESSAGES: dict[str, type[BusMessage]] = {
    "run-status": RunStatus,
    "partition-status": PartitionStatus,
    "task-status": TaskStatus,
    "task-request-status": RequestStatus,
    "container-event": ContainerEvent,
    "job-status": JobStatus,
}
