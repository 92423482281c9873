"""Treeherder: every partition state change as Taskcluster queue messages (the exchanges a stock
Treeherder reads, `queue_tasks.py`) and as a pulse job message on `exchange/infrax/v1/treeherder`,
both written through the job master's outbox with the partition's run history (`task_runs.py`).

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
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from infrax.bus import Message, Subscription, topics
from infrax.bus.messages import PartitionStatus, TaskStatus
from infrax.model import State
from infrax.store.tables import jobs
from infrax.treeherder import queue_tasks as tc
from infrax.treeherder import task_runs
from infrax.treeherder.task_runs import TcRun, TcTask

if TYPE_CHECKING:
    from infrax.jobmaster.service import JobMaster

log = logging.getLogger(__name__)

RESULTS = {State.COMPLETED: "success", State.FAILED: "fail", State.EXCEPTION: "exception", State.CANCELLED: "canceled"}
PREFETCH = 64
REPORTED_STATES = frozenset({State.PENDING, State.QUEUED, State.RUNNING, *RESULTS})
LOG_NAME = "live_backing_log"  # the name Treeherder's log parser looks for
_REVISION = re.compile(r"^[0-9a-f]{40}$")


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

    async def subscribe_tasks(self) -> Subscription:
        """A dependent task not planned yet has no partitions, so no job of its own: it is shown as
        one `unscheduled` job of its group until it is planned (then `superseded` by its partitions'
        jobs) or cancelled (then `canceled`, saying why)."""
        return await self.jobmaster.bus.subscribe(
            "jobmaster-treeherder-tasks", topics.TASKS, ["#"], self._on_task_status, prefetch=1
        )

    async def _on_task_status(self, message: Message) -> None:
        status = TaskStatus.model_validate(message.body)
        if status.job_id is None or State.PENDING not in (status.state, status.previous_state):
            return
        job = await self.job_info(status.job_id)
        if job is None or status.name not in job["dependents"] or not _REVISION.match(job["revision"]):
            return
        if status.state == State.PENDING:
            state, result = "unscheduled", "unknown"
        else:
            state, result = "completed", PLACEHOLDER_RESULTS.get(State(status.state), "superseded")
        body = placeholder_job(status, job, self.build_system, state, result)
        key = topics.routing_key(status.job_id, status.task_id, state=state)
        tags = job["dependents"][status.name].get("containerTag") or ["-"]
        async with self.jobmaster.outbox.begin() as (conn, messages):
            messages.append((topics.TREEHERDER, key, body))
            # And on the Taskcluster queue's exchanges, for a stock Treeherder.
            task, runs, events = await task_runs.record_placeholder(
                conn, status, tags[0] if isinstance(tags, list) else str(tags)
            )
            self._queue_messages(messages, job, task, runs, events)

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
        if part.job_id is None or status.revision is None or not _REVISION.match(status.revision):
            return  # Treeherder files every job under a push of a 40-digit revision
        job = await self.job_info(part.job_id)
        if job is None:
            return
        async with self.jobmaster.outbox.begin() as (conn, messages):
            task, runs, events = await task_runs.record(conn, status)
            self._queue_messages(messages, job, task, runs, events)
            for event, run in events:
                for body in pulse_jobs(event, task, run, job, self.build_system):
                    key = topics.routing_key(
                        part.job_id, part.task_id, part.id, run.run, part.container_type, body["state"]
                    )
                    messages.append((topics.TREEHERDER, key, body))

    @staticmethod
    def _queue_messages(
        messages: list[Any], job: dict[str, Any], task: TcTask, runs: list[TcRun], events: list[task_runs.Event]
    ) -> None:
        """Taskcluster's queue messages of a task's events, routed (CC) by the push's Treeherder route."""
        cc = [f"route.{tc.route(job['project'], job['revision'], job.get('id'))}"]
        retries = job["retries"].get(task.task_name, 0)
        for event, run in events:
            messages.append(
                (
                    tc.exchange(event),
                    tc.routing_key(task, None if event == "defined" else run),
                    tc.message(event, task, runs, run, retries),
                    cc,
                )
            )

    async def job_info(self, job_id: str) -> dict[str, Any] | None:
        """What Treeherder needs of the job: project, revision, push id or pull request, owner,
        URL and each task's retries (cached)."""
        if job_id in self._jobs:
            return self._jobs[job_id]
        async with self.jobmaster.db.begin() as conn:
            row = (
                await conn.execute(select(jobs.c.project, jobs.c.revision, jobs.c.details).where(jobs.c.id == job_id))
            ).first()
        if row is None:
            return None  # not (yet) a job of this job master: not cached, it may still come
        details = row.details or {}
        origin = details.get("origin") or {}
        pusher = origin.get("user")
        info = {
            "project": row.project,
            "revision": row.revision,
            "url": self.jobmaster.job_page(job_id),
            "dashboard": self.jobmaster.dashboard_url,
            "id": origin.get("pushId", origin.get("pullRequest")),
            "owner": owner(pusher, details.get("author"), self.build_system),
            "retries": {t.get("name"): t.get("retries", 0) for t in details.get("tasks", [])},
            "dependents": {t.get("name"): t for t in details.get("tasks", []) if t.get("dependsOn")},
        }
        self._jobs[job_id] = info
        while len(self._jobs) > 1000:
            self._jobs.popitem(last=False)
        return info


def owner(pusher: Any, author: Any, build_system: str) -> str:
    """Who Treeherder shows a job is for: the pusher, else the commit's author, else the build system."""
    for who in (pusher, author):
        if isinstance(who, str) and who.strip():
            return who.strip()[:50]
    return build_system


PULSE_STATE = {
    "pending": ("pending", "unknown"),
    "running": ("running", "unknown"),
    "completed": ("completed", "success"),
    "failed": ("completed", "fail"),
}


def pulse_jobs(
    event: str, task: TcTask, run: TcRun, job: dict[str, Any], build_system: str = "infrax"
) -> list[dict[str, Any]]:
    """The Treeherder job message of one run's event (none for `defined`: Treeherder shows a job once pending)."""
    if event == "defined":
        return []
    if event == "exception":
        retried = run.reason_resolved == "worker-shutdown"
        result = "retry" if retried else "canceled" if run.reason_resolved == "canceled" else "exception"
        body = _message(task, run, job, build_system, "completed", result)
        if retried:
            body["isRetried"] = True
        return [body]
    state, result = PULSE_STATE[event]
    return [_message(task, run, job, build_system, state, result)]


def _message(
    task: TcTask, run: TcRun, job: dict[str, Any], build_system: str, state: str, result: str
) -> dict[str, Any]:
    display: dict[str, Any] = {
        "jobName": f"{task.task_name} {task.idx}/{task.count}"[:140],
        **_group(task.task_name),
    }
    if task.count > 1:  # Treeherder shows jobSymbol and chunkId together: u1, u2, u3
        display |= {"chunkId": task.idx, "chunkCount": task.count}
    body = _job(job, build_system, f"{_guid(task.partition_id)}/{run.run}", run.run, display, _machine(task, run))
    body |= {"state": state, "result": result}
    if job.get("dashboard"):  # the run's page: its log with the failure lines picked out
        page = f"{job['dashboard'].rstrip('/')}/partitions/{task.partition_id}?run={run.run}"
        body["jobInfo"]["links"].append({"url": page, "linkText": "log and failures", "label": "infrax"})
    if run.message and state == "completed":
        body["jobInfo"]["summary"] = run.message
    if run.log_url and state in ("running", "completed") and len(run.log_url) <= 255:
        body["logs"] = [{"name": LOG_NAME, "url": run.log_url}]
    # Every time known on every message: Treeherder overwrites all of a job's times each time.
    for key, value in (("timeScheduled", run.scheduled), ("timeStarted", run.started), ("timeCompleted", run.resolved)):
        if value is not None:
            body[key] = value.isoformat()
    return body


PLACEHOLDER_RESULTS = {State.CANCELLED: "canceled", State.EXCEPTION: "exception"}


def placeholder_job(
    status: TaskStatus, job: dict[str, Any], build_system: str, state: str, result: str
) -> dict[str, Any]:
    """The Treeherder job standing for a dependent task until it is planned: its GUID the task's."""
    task = job["dependents"].get(status.name, {})
    needs = ", ".join(task.get("dependsOn", []))
    tags = task.get("containerTag") or ["-"]
    display = {"jobName": f"{status.name} (after {needs})"[:140], **_group(status.name), "groupSymbol": tc.NO_GROUP}
    # Where its partitions will run, so it is shown on their row.
    machine = {"name": "-", **tc.machine(tags[0] if isinstance(tags, list) else str(tags))}
    body = _job(job, build_system, f"{_guid(status.task_id)}/0", 0, display, machine)
    body |= {"state": state, "result": result, "timeScheduled": status.timestamp.isoformat()}
    if state == "completed":
        body["jobInfo"]["summary"] = status.message or f"planned: its partitions are jobs of group {status.name}"
        body["timeStarted"] = body["timeCompleted"] = status.timestamp.isoformat()  # not 1970: it never ran
    return body


def _group(task_name: str) -> dict[str, str]:
    symbols = {"jobSymbol": tc.task_symbol(task_name), "groupSymbol": tc.group_symbol(task_name)}
    return {**symbols, "groupName": task_name[:255]}


def _job(
    job: dict[str, Any], build_system: str, guid: str, retry: int, display: dict[str, Any], machine: dict[str, str]
) -> dict[str, Any]:
    """What every job message of a push says, whichever job it is."""
    origin: dict[str, Any] = {"project": _word(job["project"], 50), "revision": job["revision"]}
    if isinstance(job.get("id"), int):
        origin["id"] = job["id"]
    return {
        "taskId": guid,
        "retryId": retry,
        "buildSystem": build_system,
        "owner": job["owner"],
        "origin": origin,
        "display": display,
        "jobKind": "test",
        "tier": 1,
        "reason": "scheduled",
        "productName": job["project"][:125],
        "buildMachine": machine,
        "jobInfo": {"links": [{"url": job["url"], "linkText": "job", "label": "infrax"}]},
        "version": 1,
    }


def _guid(partition_id: str) -> str:
    """Treeherder's GUIDs are UUIDs (`slugid.decode(taskId)`): infrax's hex ids are one, written as such."""
    try:
        return str(uuid.UUID(hex=partition_id))
    except ValueError:
        return re.sub(r"[^A-Za-z0-9+-]", "-", partition_id)[:40] or "partition"


def _machine(task: TcTask, run: TcRun) -> dict[str, str]:
    machine = tc.machine(task.container_type)
    if run.worker_id:
        machine["name"] = _word(run.worker_id, 50)
    return machine


def _word(text: str, limit: int) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "-", text)[:limit] or "-"
