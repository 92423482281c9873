"""Treeherder: every partition state change as a pulse job message on `exchange/infrax/v1/treeherder`.

The messages follow Treeherder's job schema (`schemas/pulse-job.yml` in mozilla/treeherder):
the push is the job's revision (`origin.revision`, with the hg push id or the pull request
number as `origin.id`), the job group is the task, and a job is one run of one partition,
its GUID `taskId` being `<partition id as a UUID>/<run>` with `retryId` the run.

| partition state                 | state     | result    |
|---------------------------------|-----------|-----------|
| queued, dispatched              | pending   | unknown   |
| running                         | running   | unknown   |
| completed                       | completed | success   |
| failed (the task's own failure) | completed | fail      |
| exception (retries used up)     | completed | exception |
| cancelled                       | completed | canceled  |
| queued again after a lost run   | completed | retry     | (for the lost run, then `pending` for the next)

Partitions of task requests that are no job's, or whose revision is not a 40-digit id, are
not reported: Treeherder files every job under a push.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from infrax.bus import Message, Subscription, topics
from infrax.bus.messages import PartitionStatus
from infrax.model import State, TaskPartition
from infrax.store.tables import jobs

if TYPE_CHECKING:
    from infrax.jobmaster.service import JobMaster

log = logging.getLogger(__name__)

RESULTS = {State.COMPLETED: "success", State.FAILED: "fail", State.EXCEPTION: "exception", State.CANCELLED: "canceled"}
PREFETCH = 64
REPORTED_STATES = frozenset({State.PENDING, State.QUEUED, State.RUNNING, *RESULTS})
LOG_NAME = "live_backing_log"  # the name Treeherder's log parser looks for
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_OS = ("linux", "windows", "macosx", "macos", "osx", "android", "freebsd")
_ARCH = ("x86_64", "aarch64", "arm64", "x86", "i386", "armv7")


class TreeherderReporter:
    def __init__(self, jobmaster: JobMaster, build_system: str = "infrax") -> None:
        self.jobmaster = jobmaster
        self.build_system = _word(build_system, 25)
        self._jobs: OrderedDict[str, dict[str, Any] | None] = OrderedDict()
        self._reporting: dict[str, asyncio.Future[None]] = {}  # partition id -> its latest message's report

    async def subscribe(self) -> Subscription:
        # `dispatched` would only repeat `pending`, so the broker keeps it from us. Many at a time
        # (one at a time fell behind by thousands of messages on `make bench`), in order per partition.
        return await self.jobmaster.bus.subscribe(
            "jobmaster-treeherder",
            topics.PARTITIONS,
            topics.state_bindings(REPORTED_STATES),
            self._on_partition_status,
            prefetch=PREFETCH,
        )

    async def _on_partition_status(self, message: Message) -> None:
        """Report one partition's news once its earlier news is reported.

        Deliveries start their handlers in queue order, so chaining each message behind the
        previous one of the same partition keeps a run's states in the order they happened,
        while other partitions go ahead. (A message whose report fails is delivered again
        later, and only then may come after a later state of its partition.)
        """
        partition_id = message.body["partition"]["id"]
        earlier = self._reporting.get(partition_id)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reporting[partition_id] = mine
        try:
            if earlier is not None:
                await earlier
            await self._report(message)
        finally:
            mine.set_result(None)
            if self._reporting.get(partition_id) is mine:
                del self._reporting[partition_id]

    async def _report(self, message: Message) -> None:
        if message.body["partition"].get("jobId") is None:  # the bus checked the shape; no job, no push
            return
        status = PartitionStatus.model_validate(message.body)
        part = status.partition
        if part.job_id is None:
            return
        job = await self._job(part.job_id)
        if job is None:
            return
        for body in pulse_jobs(status, job, self.build_system):
            await self.jobmaster.bus.publish(
                topics.TREEHERDER,
                topics.routing_key(
                    part.job_id, part.task_id, part.id, body["retryId"], part.container_type, body["state"]
                ),
                body,
            )

    async def _job(self, job_id: str) -> dict[str, Any] | None:
        """What Treeherder needs of the job: project, push id or pull request, owner, URL (cached)."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        async with self.jobmaster.db.begin() as conn:
            row = (await conn.execute(select(jobs.c.project, jobs.c.details).where(jobs.c.id == job_id))).first()
        if row is None:
            return None  # not (yet) a job of this job master: not cached, it may still come
        origin = (row.details or {}).get("origin") or {}
        info = {
            "project": row.project,
            "url": f"{self.jobmaster.public_url}/api/v1/jobs/{job_id}",
            "id": origin.get("pushId", origin.get("pullRequest")),
            "owner": origin.get("user"),
        }
        self._jobs[job_id] = info
        while len(self._jobs) > 1000:
            self._jobs.popitem(last=False)
        return info


def pulse_jobs(status: PartitionStatus, job: dict[str, Any], build_system: str = "infrax") -> list[dict[str, Any]]:
    """The Treeherder job messages one partition transition makes (none, one, or a retry and a pending)."""
    part = status.partition
    if status.revision is None or not _REVISION.match(status.revision):
        return []
    state = State(part.state)
    if state == State.QUEUED and status.previous_state is not None and part.run > 0:
        lost = part.model_copy(update={"run": part.run - 1, "queued_at": None})
        retry = _message(status, lost, job, build_system, "completed", "retry")
        retry["isRetried"] = True
        retry["timeCompleted"] = _time(part.queued_at)
        if retry["timeCompleted"] is None:
            del retry["timeCompleted"]
        return [retry, _message(status, part, job, build_system, "pending", "unknown")]
    if state in (State.QUEUED, State.DISPATCHED, State.PENDING):
        return [_message(status, part, job, build_system, "pending", "unknown")]
    if state == State.RUNNING:
        return [_message(status, part, job, build_system, "running", "unknown")]
    if state in RESULTS:
        return [_message(status, part, job, build_system, "completed", RESULTS[state])]
    return []  # skipped: a skipped task has no partitions to show


def _message(
    status: PartitionStatus, part: TaskPartition, job: dict[str, Any], build_system: str, state: str, result: str
) -> dict[str, Any]:
    origin: dict[str, Any] = {"project": _word(job["project"], 50), "revision": status.revision}
    if isinstance(job.get("id"), int):
        origin["id"] = job["id"]
    task = status.task_name
    body: dict[str, Any] = {
        "taskId": f"{_guid(part.id)}/{part.run}",
        "retryId": part.run,
        "buildSystem": build_system,
        "origin": origin,
        "display": {
            "jobName": f"{task} {part.index}/{part.count}"[:140],
            "jobSymbol": str(part.index),
            "groupSymbol": task[:25],
            "groupName": task[:255],
            "chunkId": part.index,
            "chunkCount": part.count,
        },
        "state": state,
        "result": result,
        "jobKind": "test",
        "tier": 1,
        "reason": "scheduled",
        "productName": job["project"][:125],
        "buildMachine": _machine(part),
        "jobInfo": {"links": [{"url": job["url"], "linkText": "job", "label": "infrax"}]},
        "version": 1,
    }
    if part.message and state == "completed":
        body["jobInfo"]["summary"] = part.message
    if isinstance(job.get("owner"), str) and job["owner"].strip():
        body["owner"] = job["owner"].strip()[:50]
    if part.log_url and state in ("running", "completed") and len(part.log_url) <= 255:
        body["logs"] = [{"name": LOG_NAME, "url": part.log_url}]
    for key, value in (
        ("timeScheduled", part.queued_at),
        ("timeStarted", part.started_at),
        ("timeCompleted", part.finished_at if state == "completed" else None),
    ):
        if value is not None:
            body[key] = _time(value)
    return body


def _guid(partition_id: str) -> str:
    """Treeherder's GUIDs are UUIDs (`slugid.decode(taskId)`): infrax's hex ids are one, written as such."""
    try:
        return str(uuid.UUID(hex=partition_id))
    except ValueError:
        return re.sub(r"[^A-Za-z0-9+-]", "-", partition_id)[:40] or "partition"


def _machine(part: TaskPartition) -> dict[str, str]:
    kind = part.container_type.lower()
    machine = {
        "platform": _word(part.container_type, 100),
        "os": next((o for o in _OS if o in kind), "unknown"),
        "architecture": next((a for a in _ARCH if a in kind), "unknown"),
    }
    if part.container_id:
        machine["name"] = _word(part.container_id, 50)
    return machine


def _word(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:limit] or "-"


def _time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
