"""The scheduler: accepts task requests, plans them, dispatches partitions, follows their runs.

Every state change is written to the store first and published on the bus after the commit,
so a crash loses nothing that was accepted: on restart the store says what is still to do.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from sqlalchemy import insert, select, update

from infrax.auth.runs import RunTokens
from infrax.batcher import Batcher
from infrax.bus import Bus, Message, topics
from infrax.bus.messages import BusMessage, RunStatus
from infrax.executioner.client import ExecutionerClient, ExecutionerPool
from infrax.http import ServiceError
from infrax.model import (
    ContainerType,
    PlannedTask,
    PlanRequest,
    State,
    TaskDefinition,
    TaskRequest,
    TaskRequestSubmission,
    is_final,
    new_id,
    pick_container_type,
    utcnow,
)
from infrax.optimizer.client import OptimizerClient
from infrax.outbox import Outbox
from infrax.provisioner.client import ProvisionerClient
from infrax.retry import outage
from infrax.scheduler import records
from infrax.scheduler.cancelling import Cancelling
from infrax.scheduler.definitions import Known, TaskDefinitions
from infrax.scheduler.dispatch import Dispatching
from infrax.scheduler.events import outgoing, partition_status, request_status, task_status
from infrax.scheduler.fair_share import DEFAULT_SHARE, ProjectShare, Queued, assign_keys
from infrax.scheduler.graph import release_dependents
from infrax.scheduler.metrics import SchedulerMetrics
from infrax.scheduler.queue import QueueReading
from infrax.scheduler.recovery import HEARTBEAT_INTERVAL, Recovery
from infrax.scheduler.reruns import Reruns
from infrax.scheduler.transitions import (
    MUTABLE,
    UPDATE_PARTITION,
    RunPolicy,
    settle_request,
    settle_tasks,
    transition,
)
from infrax.store import Database, StoreError, aware
from infrax.store.tables import partitions, requests, scheduler_outbox, tasks

log = logging.getLogger(__name__)

DISPATCH_LINGER = 0.002


class Rejected(Exception):
    """A submission the scheduler refuses; the message says why (answered as HTTP 422)."""


PLAN_STEP = 100  # partitions written per step of planning a request (about 8 ms of work)


class Scheduler(Dispatching, Cancelling, Reruns, QueueReading):
    def __init__(
        self,
        db: Database,
        bus: Bus,
        optimizer: OptimizerClient,
        provisioner: ProvisionerClient,
        executioner: ExecutionerClient | ExecutionerPool,
        *,
        dispatch_timeout: float = 120.0,
        in_flight_check_interval: float = 10.0,
        run_tokens: RunTokens | None = None,
        rerun_failures: int = 2,
        intermittent_fails: bool = False,
        projects: Mapping[str, ProjectShare] | None = None,
    ) -> None:
        self.db = db
        self.projects: Mapping[str, ProjectShare] = projects or {}  # fair share: weights and limits
        # For tasks that do not say: how often what failed runs again, and whether a failure that
        # then passed fails its task.
        self.rerun_failures = rerun_failures
        self.intermittent_fails = intermittent_fails
        self.bus = bus
        self.optimizer = optimizer
        self.provisioner = provisioner
        self.executioner = executioner
        self.run_tokens = run_tokens  # signs each run it offers; None: offers carry no token
        self.instance = new_id()[:12]
        self.dispatch_timeout = dispatch_timeout
        self.in_flight_check_interval = in_flight_check_interval
        self._plan_wanted = asyncio.Event()
        self._dispatch_wanted = asyncio.Event()
        self._blocked_types: dict[str, float] = {}  # container type -> when the provisioner said full
        # What the provisioner can take, kept current by its events so that not every dispatch asks.
        self._free: dict[str, int] = {}
        self._free_checked = 0.0
        self._unclaim_later: set[str] = set()
        self._container_types: list[ContainerType] = []
        self._types_fetched = 0.0
        self._overheads: dict[str, tuple[float, float]] = {}
        self._definitions = TaskDefinitions()
        self.metrics = SchedulerMetrics(db, bus, self.count_partitions)
        self._status_batcher = Batcher(self.apply_run_statuses, max_batch=500)
        self._loops: list[asyncio.Task[None]] = []
        self._subscriptions: list[Any] = []
        # Every status change is written here with the change itself; the relay publishes it.
        self.outbox = Outbox(db, bus, scheduler_outbox)
        self.recovery = Recovery(db, self.instance, executioner, self._status_batcher.submit, self._dispatch_wanted.set)

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, *, recover_in_flight: bool = False) -> None:
        """Pick up whatever the store says is unfinished, then start the loops.

        `recover_in_flight` is for a restart of the whole system (``infrax up``): runs that the
        executioner never heard of are then known to be lost, without waiting for the timeout.
        """
        await self.recovery.beat()
        await self.recovery.release_stale_claims(everything=recover_in_flight)
        self.outbox.start()
        self._status_batcher.start()
        self._subscriptions.append(await self.bus.subscribe("scheduler", topics.RUNS, ["#"], self._on_run_status))
        self._subscriptions.append(
            await self.bus.subscribe(
                f"scheduler-capacity-{self.instance}", topics.CONTAINERS, ["#"], self._on_capacity, ephemeral=True
            )
        )
        if recover_in_flight:
            await self.recovery.check_in_flight(grace=0.0)
        self._loops = [
            asyncio.create_task(
                self._keep_doing(self._plan_wanted, self.plan_next, "planning", 1.0), name="scheduler-plan"
            ),
            asyncio.create_task(
                self._keep_doing(self._dispatch_wanted, self.dispatch_batch, "dispatch", 0.5, DISPATCH_LINGER),
                name="scheduler-dispatch",
            ),
            asyncio.create_task(self._in_flight_loop(), name="scheduler-in-flight"),
            asyncio.create_task(self._heartbeat_loop(), name="scheduler-heartbeat"),
        ]
        self._plan_wanted.set()
        self._dispatch_wanted.set()

    async def stop(self) -> None:
        for sub in self._subscriptions:
            await sub.cancel()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        await self._status_batcher.stop()
        await self.outbox.stop()

    async def published(self) -> None:
        """Until every status change committed so far has been published (and confirmed)."""
        await self.outbox.drained()

    # -- submission and queries ---------------------------------------------------------------

    async def submit(self, submission: TaskRequestSubmission) -> TaskRequest:
        await self._check_container_tags(submission.tasks)
        now = utcnow()
        request_id = new_id()
        task_rows = [
            {
                "id": new_id(),
                "request_id": request_id,
                "job_id": submission.job_id,
                "position": i,
                "name": t.name,
                "definition": t.wire(),
                "state": State.PENDING,
                "message": None,
            }
            for i, t in enumerate(submission.tasks)
        ]
        async with self.outbox.begin() as (conn, messages):
            await conn.execute(
                insert(requests).values(
                    id=request_id,
                    job_id=submission.job_id,
                    project=submission.project,
                    revision=submission.revision,
                    changed_paths=submission.changed_paths,
                    trusted=submission.trusted,
                    state=State.PENDING,
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(insert(tasks), task_rows)
            request = await records.load_request(conn, request_id)
            messages += outgoing(
                [request_status(request_id, submission.job_id, State.PENDING, None)]
                + [task_status(row, State.PENDING, None) for row in task_rows]
            )
        assert request is not None
        self._plan_wanted.set()
        return request

    async def _check_container_tags(self, definitions: list[TaskDefinition]) -> None:
        for refresh in (False, True):
            if refresh or not self._container_types:
                self._container_types = await self.provisioner.container_types()
                self._types_fetched = time.monotonic()
            unknown = [t for t in definitions if pick_container_type(t.container_tag, self._container_types) is None]
            if not unknown:
                return
        known = sorted({tag for t in self._container_types for tag in t.tags})
        raise Rejected(
            "; ".join(f"task {t.name!r}: no container type has tags {t.container_tag}" for t in unknown)
            + f" (known tags: {', '.join(known)})"
        )

    # -- planning ---------------------------------------------------------------------------

    async def _keep_doing(
        self, wanted: asyncio.Event, step: Callable[[], Awaitable[bool]], what: str, backoff: float, linger: float = 0.0
    ) -> None:
        """Run `step` while it says there is more, whenever `wanted` is set (or every second)."""
        while True:
            await _wait(wanted, 1.0)
            if linger:
                await asyncio.sleep(linger)  # see Batcher: a few more freed containers per round
            try:
                while await step():
                    pass
            except ServiceError as error:
                # Another component is down or busy: one warning per outage, then wait for it.
                outage(error.service or "a component").failed(error)
                await asyncio.sleep(backoff)
            except StoreError as error:
                outage("the database").failed(error)
                await asyncio.sleep(backoff)
            except Exception:
                log.exception("%s failed; retrying", what)
                await asyncio.sleep(backoff)

    async def plan_next(self) -> bool:
        """Plan the oldest ready dependent task, else the oldest pending request (the tasks of it
        that depend on none); False when nothing waits (the planning loop's step)."""
        found = await self._next_to_plan()
        if found is None:
            return False
        row, task_rows, dependent = found
        definitions = [TaskDefinition.model_validate(t["definition"]) for t in task_rows]
        if not self._container_types or time.monotonic() - self._types_fetched > 10.0:
            self._container_types = await self.provisioner.container_types()
            self._types_fetched = time.monotonic()
        plan = await self.optimizer.plan(
            PlanRequest(
                project=row["project"],
                tasks=definitions,
                container_types=self._container_types,
                changed_paths=row["changed_paths"],
            ),
            explain=True,  # kept with each task: the dashboard's job page says why it was planned so
        )
        await asyncio.sleep(0)  # the plan's decoding was one step: the writing is the next ones
        order = {key: i for i, key in enumerate(plan.dispatch_order)}
        # Microseconds, so requests planned later queue later; a dependent (the tests of a build) queues
        # where its request does, not behind everything submitted since.
        seq_base = (int(aware(row["created_at"]).timestamp() * 1e6) if dependent else time.time_ns() // 1000) * 1000
        now = utcnow()
        events: list[BusMessage] = []
        queued: list[tuple[Any, PlannedTask]] = []
        async with self.outbox.begin() as (conn, messages):
            # Locked: another scheduler may have planned it meanwhile, or a cancel come in.
            if dependent:
                current = (
                    await conn.execute(select(tasks.c.state).where(tasks.c.id == task_rows[0]["id"]).with_for_update())
                ).scalar()
            else:
                current = (
                    await conn.execute(select(requests.c.state).where(requests.c.id == row["id"]).with_for_update())
                ).scalar()
            if current != State.PENDING:
                return True
            for task_row, planned in zip(task_rows, plan.tasks, strict=True):
                if planned.container_type is None:
                    state, message = State.EXCEPTION, planned.reason
                elif planned.skipped:
                    state, message = State.SKIPPED, planned.reason
                else:
                    state, message = State.QUEUED, None
                    queued.append((task_row, planned))
                await conn.execute(
                    update(tasks)
                    .where(tasks.c.id == task_row["id"])
                    .values(state=state, message=message, explanation=planned.explanation)
                )
                events.append(task_status(task_row, state, State.PENDING, message))
            await self.outbox.add(conn, outgoing(events))
            waiting = [
                Queued(planned.container_type, planned.priority, order.get((planned.position, part.index), 0))
                for _, planned in queued
                if planned.container_type is not None
                for part in planned.partitions
            ]
            share = self.projects.get(row["project"], DEFAULT_SHARE)
            keys = iter(await assign_keys(conn, row["project"], share, waiting, dependent=dependent))
            part_rows = (
                {
                    "id": new_id(),
                    "seq": seq_base + order.get((planned.position, part.index), 0),
                    "task_id": task_row["id"],
                    "request_id": row["id"],
                    "job_id": row["job_id"],
                    "idx": part.index,
                    "count": len(planned.partitions),
                    "files": part.files,
                    "container_type": planned.container_type,
                    "state": State.QUEUED,
                    "run": 0,
                    "priority": planned.priority,
                    "project": row["project"],
                    "fair_key": next(keys),
                    "expected_duration": part.expected_duration,
                    "queued_at": now,
                }
                for task_row, planned in queued
                for part in planned.partitions
            )
            task_names = {t["id"]: t["name"] for t in task_rows}
            # In steps, the event loop serving others between them: ten thousand partitions and their
            # messages (each checked against its schema) are a second of work done at once, and even
            # five hundred kept health checks waiting 50 ms.
            while step := list(itertools.islice(part_rows, PLAN_STEP)):
                await conn.execute(insert(partitions), step)
                await self.outbox.add(
                    conn,
                    outgoing(
                        partition_status(records.partition_from_row(p), None, task_names[p["task_id"]], row)
                        for p in step
                    ),
                )
                await asyncio.sleep(0)
            # A task skipped or refused here ends the wait of its dependents (or cancels them).
            released, ready = await release_dependents(conn, row["id"])
            messages += outgoing(released + await settle_request(conn, row["id"]))
        planned_parts = sum(len(p.partitions) for _, p in queued)
        others = [f"{p.name}: {p.reason}" for p in plan.tasks if p.skipped or p.container_type is None]
        log.info(
            "request %s%s planned%s: %d task(s) into %d partition(s)%s",
            row["id"][:12],
            f" (job {row['job_id'][:12]})" if row["job_id"] else "",
            f" ({task_rows[0]['name']}, its dependencies ended)" if dependent else "",
            len(queued),
            planned_parts,
            f"; not run: {'; '.join(others)[:300]}" if others else "",
        )
        self._dispatch_wanted.set()
        if ready:
            self._plan_wanted.set()
        return True

    async def _next_to_plan(self) -> tuple[Any, list[Any], bool] | None:
        """(request row, the task rows to plan now, whether that is one ready dependent)."""
        async with self.db.begin() as conn:
            ready = (
                (
                    await conn.execute(
                        select(tasks)
                        .where(tasks.c.state == State.PENDING, tasks.c.ready_at.is_not(None))
                        .order_by(tasks.c.ready_at)
                        .limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if ready is not None:
                of_ready = (
                    (await conn.execute(select(requests).where(requests.c.id == ready["request_id"]))).mappings().one()
                )
                return of_ready, [ready], True
            row = (
                (
                    await conn.execute(
                        select(requests)
                        .where(requests.c.state == State.PENDING)
                        .order_by(requests.c.created_at)
                        .limit(1)
                    )
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            task_rows = (
                (await conn.execute(select(tasks).where(tasks.c.request_id == row["id"]).order_by(tasks.c.position)))
                .mappings()
                .all()
            )
        # Dependents wait: they are planned when what they depend on has ended (scheduler/graph.py).
        return row, [t for t in task_rows if not t["definition"].get("dependsOn")], False

    # -- following runs ---------------------------------------------------------------------

    async def _on_run_status(self, message: Message) -> None:
        await self._status_batcher.submit(RunStatus.model_validate(message.body))

    async def apply_run_statuses(self, statuses: list[RunStatus]) -> None:
        """The one update path for runs' news: each partition's transition, then its task's and request's
        roll-up, committed together with the status changes they make (the outbox publishes them, in
        order). News of another run than the partition's current one, or of a partition already final,
        is ignored."""
        requeued = False
        async with self.outbox.begin() as (conn, messages):
            ids = list({s.partition_id for s in statuses})
            # Locked in id order: schedulers applying news of the same partitions take turns, never deadlock.
            rows = {
                r["id"]: dict(r)
                for r in (
                    await conn.execute(
                        select(partitions).where(partitions.c.id.in_(ids)).order_by(partitions.c.id).with_for_update()
                    )
                )
                .mappings()
                .all()
            }
            changed: dict[str, tuple[dict[str, Any], str]] = {}
            measured: dict[str, RunStatus] = {}
            known: dict[str, Known] = {}
            for status in statuses:
                row = rows.get(status.partition_id)
                if row is None or row["run"] != status.run or is_final(row["state"]):
                    continue  # a duplicate, or news of a run already replaced or finished
                known[row["task_id"]] = await self._definitions.get(conn, row["task_id"])
                policy = RunPolicy.of(known[row["task_id"]].definition, self.rerun_failures, self.intermittent_fails)
                values = transition(row, status, policy)
                if values is None:
                    continue
                before = changed.get(row["id"], (row, row["state"]))[1]
                row.update(values)
                changed[row["id"]] = (row, before)
                if is_final(row["state"]) and not row["failure_reruns"]:
                    measured[row["id"]] = status  # a re-run of failures ran part of it: it measures nothing
                requeued |= row["state"] == State.QUEUED
            if not changed:
                return
            await conn.execute(
                UPDATE_PARTITION,
                [{"b_id": row["id"], **{f"b_{k}": row[k] for k in MUTABLE}} for row, _ in changed.values()],
            )
            events: list[BusMessage] = []
            for row, before in changed.values():
                task = known[row["task_id"]]
                event = partition_status(
                    records.partition_from_row(row),
                    before,
                    task.definition.name,
                    {"project": task.project, "revision": task.revision},
                )
                if row["id"] in measured:
                    event.duration = measured[row["id"]].duration
                    event.file_durations = measured[row["id"]].file_durations
                    event.checkout_seconds = measured[row["id"]].checkout_seconds
                events.append(event)
            settled, ready = await settle_tasks(conn, {r["task_id"] for r, _ in changed.values()})
            messages += outgoing(events + settled)
        if requeued:
            self._dispatch_wanted.set()
        if ready:
            self._plan_wanted.set()

    # -- lost runs --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            try:
                await self.recovery.beat()
            except StoreError as error:
                outage("the database").failed(error)
            except Exception:
                log.exception("scheduler heartbeat failed")

    async def _in_flight_loop(self) -> None:
        while True:
            await asyncio.sleep(self.in_flight_check_interval)
            try:
                await self.recovery.check_in_flight(grace=self.dispatch_timeout)
            except (StoreError, ServiceError) as error:
                log.debug("in-flight check postponed: %s", error)
            except Exception:
                log.exception("in-flight check failed")


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()
