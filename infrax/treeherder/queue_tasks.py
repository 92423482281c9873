"""Each partition as a Taskcluster task, the shape a stock Treeherder ingests (docs/code-hosts.md).

Treeherder's Taskcluster handler reads a task's messages on the queue's exchanges, fetches the
task's definition from `<rootUrl>/api/queue/v1/task/<taskId>` and files it under the push its
`tc-treeherder.v2.<project>.<revision>[.<pushId>]` route names. So a partition is a task whose
id is the partition's UUID as a slugid, a partition run is a task run, and the task request is
the task group. This module only builds those shapes, from the rows `reporter.py` keeps.

| partition                     | run state | reasonResolved  | exchange       |
|-------------------------------|-----------|-----------------|----------------|
| queued, dispatched            | pending   |                 | task-pending   |
| running                       | running   |                 | task-running   |
| completed                     | completed | completed       | task-completed |
| failed                        | failed    | failed          | task-failed    |
| exception (retries used up)   | exception | internal-error  | task-exception |
| cancelled                     | exception | canceled        | task-exception |
| queued again after a lost run | exception | worker-shutdown | task-exception |

(the lost run is resolved `worker-shutdown` and the next run is created as a `retry`.)
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from typing import Any

import slugid

from infrax.bus import topics
from infrax.model import State

PROVISIONER = "infrax"
SCHEDULER = "infrax"
WORKER_GROUP = "infrax"
ROUTE_PREFIX = "tc-treeherder.v2"
LOG_ARTIFACT = "public/logs/live_backing.log"
MESSAGE_VERSION = 1
DEADLINE = timedelta(days=1)  # Taskcluster's default; infrax has no deadline, Treeherder reads none
EXPIRES = timedelta(days=365)
FINAL_RUN_STATES = frozenset({"completed", "failed", "exception"})
RUN_STATE = {
    State.QUEUED: "pending",
    State.DISPATCHED: "pending",
    State.PENDING: "pending",
    State.RUNNING: "running",
    State.COMPLETED: "completed",
    State.FAILED: "failed",
    State.EXCEPTION: "exception",
    State.CANCELLED: "exception",
}
REASON_RESOLVED = {
    State.COMPLETED: "completed",
    State.FAILED: "failed",
    State.EXCEPTION: "internal-error",
    State.CANCELLED: "canceled",
}
_IDENTIFIER = re.compile(r"[^A-Za-z0-9_-]")


def task_id(partition_id: str) -> str:
    """The partition's Taskcluster task id: its UUID as a slugid (Treeherder decodes it back)."""
    return str(slugid.encode(uuid.UUID(hex=partition_id)))


def partition_id(task_slug: str) -> str | None:
    """The partition a task id names, or None for one that is no slugid."""
    try:
        return str(slugid.decode(task_slug).hex)
    except (ValueError, TypeError):
        return None


def worker_type(container_type: str) -> str:
    """Taskcluster's workerType pattern is `^[a-z]([-a-z0-9]{0,36}[a-z0-9])?$`: linux_x86_64 is linux-x86-64."""
    kind = re.sub(r"[^a-z0-9-]", "-", container_type.lower()).strip("-")
    if not kind or not kind[0].isalpha():
        kind = f"w-{kind}".rstrip("-")
    return kind[:38].rstrip("-")


def worker_id(container_id: str | None) -> str:
    return (_IDENTIFIER.sub("-", container_id) if container_id else "unknown")[:38] or "unknown"


def task_symbol(task_name: str) -> str:
    """A task's Treeherder symbol: the initials of its name's words (browser-chrome: bc, unit: u)."""
    words = [w for w in re.split(r"[^A-Za-z0-9]+", task_name) if w]
    return ("".join(w[0] for w in words) or "t")[:20]


def group_symbol(task_name: str) -> str:
    """The job group's symbol: the task's initials in capitals (`integration-tests`: IT), short as
    Treeherder's groups are (`M(bc1 bc2)`); its name says the rest."""
    return task_symbol(task_name).upper()[:25]


NO_GROUP = "?"  # Treeherder's symbol for a job of no group


def route(project: str, revision: str, push_id: int | None) -> str:
    return f"{ROUTE_PREFIX}.{project}.{revision}" + (f".{push_id}" if push_id else "")


def time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def definition(task: Any, job: dict[str, Any]) -> dict[str, Any]:
    """The task definition `GET /api/queue/v1/task/<taskId>` answers (`task.yml`'s shape), with
    Treeherder's `extra.treeherder` (`task-treeherder-config.yml`)."""
    created = task.created_at
    symbol = task_symbol(task.task_name)
    treeherder: dict[str, Any] = {
        "symbol": f"{symbol}{task.idx}" if task.count > 1 else symbol,
        # A task waiting to be planned is a job of its own, not one more symbol beside its chunks.
        "groupSymbol": group_symbol(task.task_name) if task.count > 0 else NO_GROUP,
        "groupName": task.task_name[:255],
        "machine": machine(task.container_type),
        "tier": 1,
        "jobKind": "test",
        "collection": {"opt": True},
        "productName": job["project"][:125],
    }
    if task.count > 1:
        treeherder["chunks"] = {"current": task.idx, "total": task.count}
    if task.count == 0:  # a dependent not planned yet (task_runs.record_placeholder)
        name, description = (
            f"{task.task_name} (not planned yet)",
            f"task {task.task_name}, waiting for its dependencies",
        )
    else:
        name = f"{task.task_name} {task.idx}/{task.count}"
        description = f"partition {task.idx} of {task.count} of task {task.task_name}"
    return {
        **_queue_fields(task),
        "dependencies": [],
        "requires": "all-completed",
        "routes": [route(job["project"], job["revision"], job.get("id"))],
        "retries": job["retries"].get(task.task_name, 0),
        "created": time(created),
        "scopes": [],
        "payload": {},
        "metadata": {
            "name": name[:255],
            "description": description,
            "owner": job["owner"],
            "source": job["url"],
        },
        "tags": tags(task),
        "extra": {"treeherder": treeherder, "infrax": {"partitionId": task.partition_id, "jobId": task.job_id}},
    }


def _queue_fields(task: Any) -> dict[str, Any]:
    """What a task's definition and its status both say of where it is queued and for how long."""
    kind = worker_type(task.container_type)
    return {
        "provisionerId": PROVISIONER,
        "workerType": kind,
        "taskQueueId": f"{PROVISIONER}/{kind}",
        "schedulerId": SCHEDULER,
        "projectId": "none",
        "taskGroupId": task_id(task.request_id),
        "priority": "medium",
        "deadline": time(task.created_at + DEADLINE),
        "expires": time(task.created_at + EXPIRES),
    }


def machine(container_type: str) -> dict[str, str]:
    kind = container_type.lower()
    os = next((o for o in ("linux", "windows", "macosx", "android", "freebsd") if o in kind), "unknown")
    arch = next((a for a in ("x86_64", "aarch64", "arm64", "x86", "i386", "armv7") if a in kind), "unknown")
    return {"platform": _IDENTIFIER.sub("-", container_type)[:50] or "unknown", "os": os, "architecture": arch}


def status(task: Any, runs: list[Any], retries: int) -> dict[str, Any]:
    """`task-status.yml`: the task's state is its latest run's."""
    return {
        "taskId": task_id(task.partition_id),
        **_queue_fields(task),
        "retriesLeft": max(0, retries - (len(runs) - 1)) if runs else retries,
        "state": runs[-1].state if runs else "unscheduled",
        "runs": [_run(r) for r in runs],
    }


def _run(run: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "runId": run.run,
        "state": run.state,
        "reasonCreated": run.reason_created,
        "scheduled": time(run.scheduled),
    }
    if run.reason_resolved:
        body["reasonResolved"] = run.reason_resolved
    if run.started is not None:
        body |= {
            "workerGroup": WORKER_GROUP,
            "workerId": worker_id(run.worker_id),
            "takenUntil": time(run.resolved or run.started + DEADLINE),
            "started": time(run.started),
        }
    if run.resolved is not None:
        body["resolved"] = time(run.resolved)
    return body


def tags(task: Any) -> dict[str, str]:
    return {"kind": "test", "label": task.task_name[:4000]}


def message(event: str, task: Any, runs: list[Any], run: Any | None, retries: int) -> dict[str, Any]:
    """The body Taskcluster's queue publishes on `task-<event>` (`task-<event>-message.yml`)."""
    body: dict[str, Any] = {"version": MESSAGE_VERSION, "status": status(task, runs, retries)}
    if event == "defined":
        body["task"] = {"tags": tags(task)}
        return body
    assert run is not None
    body["runId"] = run.run
    body["task"] = {"tags": tags(task)}
    if event in ("running", "completed", "failed") or (event == "exception" and run.started is not None):
        body["workerGroup"] = WORKER_GROUP
        body["workerId"] = worker_id(run.worker_id)
    if event == "running":
        body["takenUntil"] = time(run.resolved or (run.started or run.scheduled) + DEADLINE)
    return body


def routing_key(task: Any, run: Any | None) -> str:
    """The queue's primary routing key; `_` for what is not known yet."""
    started = run is not None and run.started is not None
    words = [
        "primary",
        task_id(task.partition_id),
        "_" if run is None else str(run.run),
        WORKER_GROUP if started else "_",
        worker_id(run.worker_id) if started and run is not None else "_",
        PROVISIONER,
        worker_type(task.container_type),
        SCHEDULER,
        task_id(task.request_id),
        "_",
    ]
    return ".".join(words)


def exchange(event: str) -> str:
    return f"{topics.TASKCLUSTER_QUEUE}/task-{event}"
