"""The scheduler: accepts task requests, plans them, dispatches partitions, follows their runs.

Every state change is written to the store first and published on the bus after the commit,
so a crash loses nothing that was accepted: on restart the store says what is still to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.auth.runs import RunTokens
from infrax.background import BackgroundTasks
from infrax.batcher import Batcher
from infrax.bus import Bus, Message, topics
from infrax.bus.messages import BusMessage, ContainerEvent, PartitionStatus, RequestStatus, RunStatus, TaskStatus
from infrax.executioner.client import ExecutionerClient, ExecutionerPool
from infrax.http import ServiceError
from infrax.model import (
    FINAL_STATES,
    ContainerType,
    PartitionOffer,
    PlanRequest,
    State,
    Task,
    TaskDefinition,
    TaskPartition,
    TaskRequest,
    TaskRequestSubmission,
    is_final,
    new_id,
    pick_container_type,
    run_id_of,
    utcnow,
)
from infrax.optimizer.client import OptimizerClient
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler import records
from infrax.scheduler.aggregate import aggregate
from infrax.store import Database, aware
from infrax.store.tables import partitions, requests, tasks

log = logging.getLogger(__name__)

DISPATCH_BATCH = 64
DISPATCH_LINGER = 0.002
CLAIM_TIMEOUT = 30.0
DEFINITIONS_KEPT = 10_000  # seconds; a claim is held only while offering, a few milliseconds
IN_FLIGHT = (State.DISPATCHED, State.RUNNING)


class Rejected(Exception):
    """A submission the scheduler refuses; the message says why (answered as HTTP 422)."""


class NotFound(Exception):
    pass


class Scheduler:
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
    ) -> None:
        self.db = db
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
        self._container_types: list[ContainerType] = []
        self._types_fetched = 0.0
        # Task definitions by task id, with their project and revision: read once per task, not per run.
        self._definitions: OrderedDict[str, tuple[TaskDefinition, str, str | None]] = OrderedDict()
        self._trusted: dict[str, bool] = {}  # task id -> its request's `trusted`, kept beside _definitions
        self._status_batcher = Batcher(self.apply_run_statuses, max_batch=500)
        self._loops: list[asyncio.Task[None]] = []
        self._publishing = BackgroundTasks()
        self._subscriptions: list[Any] = []

    # -- life cycle -------------------------------------------------------------------------

    async def start(self, *, recover_in_flight: bool = False) -> None:
        """Pick up whatever the store says is unfinished, then start the loops.

        `recover_in_flight` is for a restart of the whole system (``infrax up``): runs that the
        executioner never heard of are then known to be lost, without waiting for the timeout.
        """
        await self.release_stale_claims(everything=recover_in_flight)
        self._status_batcher.start()
        self._subscriptions.append(await self.bus.subscribe("scheduler", topics.RUNS, ["#"], self._on_run_status))
        self._subscriptions.append(
            await self.bus.subscribe(
                f"scheduler-capacity-{self.instance}", topics.CONTAINERS, ["#"], self._on_capacity, ephemeral=True
            )
        )
        if recover_in_flight:
            await self.check_in_flight(grace=0.0)
        self._loops = [
            asyncio.create_task(
                self._keep_doing(self._plan_wanted, self.plan_next, "planning", 1.0), name="scheduler-plan"
            ),
            asyncio.create_task(
                self._keep_doing(self._dispatch_wanted, self.dispatch_batch, "dispatch", 0.5, DISPATCH_LINGER),
                name="scheduler-dispatch",
            ),
            asyncio.create_task(self._in_flight_loop(), name="scheduler-in-flight"),
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
        await self.published()

    async def published(self) -> None:
        """Until every status change committed so far has been handed to the bus."""
        await self._publishing.wait()

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
        async with self.db.begin() as conn:
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
        assert request is not None
        await self._publish(
            [_request_status(request_id, submission.job_id, State.PENDING, None)]
            + [_task_status(row, State.PENDING, None) for row in task_rows]
        )
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

    async def get_request(self, request_id: str) -> TaskRequest:
        async with self.db.begin() as conn:
            request = await records.load_request(conn, request_id)
        if request is None:
            raise NotFound(f"no task request {request_id}")
        return request

    async def list_requests(self, job_id: str | None = None, state: str | None = None) -> list[TaskRequest]:
        query = select(requests).order_by(requests.c.created_at.desc()).limit(500)
        if job_id:
            query = query.where(requests.c.job_id == job_id)
        if state:
            query = query.where(requests.c.state == state)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [records.request_from_row(r) for r in rows]

    async def get_task(self, task_id: str) -> Task:
        async with self.db.begin() as conn:
            task = await records.load_task(conn, task_id)
        if task is None:
            raise NotFound(f"no task {task_id}")
        return task

    async def get_partition(self, partition_id: str) -> TaskPartition:
        async with self.db.begin() as conn:
            partition = await records.load_partition(conn, partition_id)
        if partition is None:
            raise NotFound(f"no partition {partition_id}")
        return partition

    async def list_partitions(self, request_id: str | None = None, state: str | None = None) -> list[TaskPartition]:
        query = select(partitions).order_by(partitions.c.seq)
        if request_id:
            query = query.where(partitions.c.request_id == request_id)
        if state:
            query = query.where(partitions.c.state == state)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [records.partition_from_row(r) for r in rows]

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
                log.warning("%s postponed: %s", what, error)
                await asyncio.sleep(backoff)
            except Exception:
                log.exception("%s failed; retrying", what)
                await asyncio.sleep(backoff)

    async def plan_next(self) -> bool:
        """Plan the oldest pending request; False when none is pending (the planning loop's step)."""
        async with self.db.begin() as conn:
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
                return False
            task_rows = (
                (await conn.execute(select(tasks).where(tasks.c.request_id == row["id"]).order_by(tasks.c.position)))
                .mappings()
                .all()
            )
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
            )
        )
        order = {key: i for i, key in enumerate(plan.dispatch_order)}
        seq_base = time.time_ns() // 1000 * 1000  # microseconds, so requests planned later queue later
        now = utcnow()
        events: list[BusMessage] = []
        part_rows: list[dict[str, Any]] = []
        async with self.db.begin() as conn:
            # Locked: another scheduler may have planned it meanwhile, or a cancel come in.
            current = (
                await conn.execute(select(requests.c.state).where(requests.c.id == row["id"]).with_for_update())
            ).scalar()
            if current != State.PENDING:
                return True
            task_states: list[str] = []
            for task_row, planned in zip(task_rows, plan.tasks, strict=True):
                if planned.container_type is None:
                    state, message = State.EXCEPTION, planned.reason
                elif planned.skipped:
                    state, message = State.SKIPPED, planned.reason
                else:
                    state, message = State.QUEUED, None
                    for part in planned.partitions:
                        part_rows.append(
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
                                "expected_duration": part.expected_duration,
                                "queued_at": now,
                            }
                        )
                task_states.append(state)
                await conn.execute(
                    update(tasks).where(tasks.c.id == task_row["id"]).values(state=state, message=message)
                )
                events.append(_task_status(task_row, state, State.PENDING, message))
            if part_rows:
                await conn.execute(insert(partitions), part_rows)
            request_state = _request_state(task_states)
            await conn.execute(
                update(requests).where(requests.c.id == row["id"]).values(state=request_state, updated_at=now)
            )
        task_names = {t["id"]: t["name"] for t in task_rows}
        events += [
            _partition_status(records.partition_from_row(p), None, task_names[p["task_id"]], row) for p in part_rows
        ]
        events.append(_request_status(row["id"], row["job_id"], request_state, State.PENDING))
        self._dispatch_wanted.set()
        # In the background, like every status change after its commit: a request of a thousand
        # partitions took its dispatch a quarter of a second to start while it waited for these.
        self._publish_soon(events)
        return True

    # -- dispatching ------------------------------------------------------------------------

    async def dispatch_batch(self) -> bool:
        """Offer as many queued partitions as the provisioner says it can take; True if more may follow."""
        now_mono = time.monotonic()
        # A type blocked for long is tried again even without a capacity event, in case one was lost.
        self._blocked_types = {t: since for t, since in self._blocked_types.items() if now_mono - since < 2.0}
        if now_mono - self._free_checked > 1.0:
            self._free = await self.provisioner.capacity()
            self._free_checked = now_mono
        free = {t: n for t, n in self._free.items() if n > 0 and t not in self._blocked_types}
        if not free:
            return False
        claimed: list[Any] = []
        # Each claim is one statement that locks, skips what another scheduler holds and marks in one go.
        async with self.db.each_alone() as conn:
            for container_type, room in free.items():
                claimable = (
                    select(partitions.c.id)
                    .where(
                        partitions.c.state == State.QUEUED,
                        partitions.c.claimed_by.is_(None),
                        partitions.c.container_type == container_type,
                    )
                    .order_by(partitions.c.priority.desc(), partitions.c.seq)
                    .limit(min(room, DISPATCH_BATCH))
                    .with_for_update(skip_locked=True)
                )
                claimed += (
                    (
                        await conn.execute(
                            update(partitions)
                            .where(partitions.c.id.in_(claimable.scalar_subquery()))
                            .values(claimed_by=self.instance, claimed_at=utcnow())
                            .returning(*partitions.c)
                        )
                    )
                    .mappings()
                    .all()
                )
            if not claimed:
                return False
            claimed = sorted(claimed, key=lambda p: (-p["priority"], p["seq"]))
            offers = [await self._offer_for(conn, p) for p in claimed]
        try:
            answers = await self.provisioner.offer(offers)
        except BaseException:
            await self._unclaim([p["id"] for p in claimed])
            raise
        accepted = {a.run_id for a in answers if a.accepted}
        for answer, offer in zip(answers, offers, strict=True):
            self._free[offer.container_type] = max(0, self._free.get(offer.container_type, 0) - 1)
            if not answer.accepted:
                self._free[offer.container_type] = 0
                self._blocked_types.setdefault(offer.container_type, time.monotonic())
                log.debug("provisioner rejected %s: %s", answer.run_id, answer.reason)
        accepted_ids = [o.partition_id for o in offers if o.run_id in accepted]
        rejected_ids = [o.partition_id for o in offers if o.run_id not in accepted]
        if rejected_ids:
            await self._unclaim(rejected_ids)
        if not accepted_ids:
            return False
        async with self.db.each_alone() as conn:
            # Still ours and still queued: a cancel or a run's news may have come in meanwhile.
            dispatched = (
                (
                    await conn.execute(
                        update(partitions)
                        .where(
                            partitions.c.id.in_(accepted_ids),
                            partitions.c.claimed_by == self.instance,
                            partitions.c.state == State.QUEUED,
                        )
                        .values(state=State.DISPATCHED, dispatched_at=utcnow(), claimed_by=None)
                        .returning(*partitions.c)
                    )
                )
                .mappings()
                .all()
            )
            if len(dispatched) < len(accepted_ids):
                await conn.execute(
                    update(partitions)
                    .where(partitions.c.id.in_(accepted_ids), partitions.c.claimed_by == self.instance)
                    .values(claimed_by=None)
                )
        offered = {o.partition_id: o for o in offers}
        events: list[BusMessage] = [
            _partition_status(
                records.partition_from_row(row),
                State.QUEUED,
                offered[row["id"]].task_name,
                {"project": offered[row["id"]].project, "revision": offered[row["id"]].revision},
            )
            for row in dispatched
        ]
        self._publish_soon(events)
        return True

    async def _unclaim(self, ids: list[str]) -> None:
        async with self.db.each_alone() as conn:
            await conn.execute(
                update(partitions)
                .where(partitions.c.id.in_(ids), partitions.c.claimed_by == self.instance)
                .values(claimed_by=None)
            )

    async def _definition(self, conn: AsyncConnection, task_id: str) -> tuple[TaskDefinition, str, str | None]:
        cached = self._definitions.get(task_id)
        if cached is not None:
            self._definitions.move_to_end(task_id)
        else:
            row = (
                await conn.execute(
                    select(tasks.c.definition, requests.c.project, requests.c.revision, requests.c.trusted)
                    .join(requests, requests.c.id == tasks.c.request_id)
                    .where(tasks.c.id == task_id)
                )
            ).one()
            cached = (TaskDefinition.model_validate(row.definition), row.project, row.revision)
            self._trusted[task_id] = bool(row.trusted)
            self._definitions[task_id] = cached
            if len(self._definitions) > DEFINITIONS_KEPT:
                self._trusted.pop(self._definitions.popitem(last=False)[0], None)
        return cached

    async def _offer_for(self, conn: AsyncConnection, part: Any) -> PartitionOffer:
        definition, project, revision = await self._definition(conn, part["task_id"])
        return PartitionOffer(
            run_id=run_id_of(part["id"], part["run"]),
            partition_id=part["id"],
            task_id=part["task_id"],
            request_id=part["request_id"],
            job_id=part["job_id"],
            task_name=definition.name,
            index=part["idx"],
            count=part["count"],
            run=part["run"],
            container_type=part["container_type"],
            files=part["files"],
            bootstrapper=definition.bootstrapper,
            bootstrapper_arguments=definition.bootstrapper_arguments,
            env=definition.env,
            max_run_time=definition.max_run_time,
            project=project,
            revision=revision,
            trusted=self._trusted.get(part["task_id"], False),
            run_token=None
            if self.run_tokens is None
            else self.run_tokens.make(
                run_id_of(part["id"], part["run"]), part["id"], part["run"], part["job_id"], definition.max_run_time
            ),
        )

    async def _on_capacity(self, message: Message) -> None:
        event = ContainerEvent.model_validate(message.body)
        if event.event == "free":
            self._free[event.container_type] = self._free.get(event.container_type, 0) + event.count
        else:
            self._free_checked = 0.0  # ask the provisioner again
        if event.event in ("free", "stopped", "lost"):
            self._blocked_types.pop(event.container_type, None)
            self._dispatch_wanted.set()

    # -- following runs ---------------------------------------------------------------------

    async def _on_run_status(self, message: Message) -> None:
        await self._status_batcher.submit(RunStatus.model_validate(message.body))

    async def apply_run_statuses(self, statuses: list[RunStatus]) -> None:
        """The one update path for runs' news: each partition's transition, then its task's and request's
        roll-up, committed together; the status changes are published after the commit, in order.
        News of another run than the partition's current one, or of a partition already final, is ignored."""
        events: list[BusMessage] = []
        requeued = False
        async with self.db.begin() as conn:
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
            known: dict[str, tuple[TaskDefinition, str, str | None]] = {}
            for status in statuses:
                row = rows.get(status.partition_id)
                if row is None or row["run"] != status.run or is_final(row["state"]):
                    continue  # a duplicate, or news of a run already replaced or finished
                known[row["task_id"]] = await self._definition(conn, row["task_id"])
                values = _transition(row, status, known[row["task_id"]][0].retries)
                if values is None:
                    continue
                before = changed.get(row["id"], (row, row["state"]))[1]
                row.update(values)
                changed[row["id"]] = (row, before)
                if is_final(row["state"]):
                    measured[row["id"]] = status
                requeued |= row["state"] == State.QUEUED
            if changed:
                await conn.execute(
                    _UPDATE_PARTITION,
                    [{"b_id": row["id"], **{f"b_{k}": row[k] for k in _MUTABLE}} for row, _ in changed.values()],
                )
            events += await self._settle_tasks(conn, {r["task_id"] for r, _ in changed.values()})
        for row, before in changed.values():
            definition, project, revision = known[row["task_id"]]
            event = _partition_status(
                records.partition_from_row(row), before, definition.name, {"project": project, "revision": revision}
            )
            if row["id"] in measured:
                event.duration = measured[row["id"]].duration
                event.file_durations = measured[row["id"]].file_durations
            events.insert(0, event)
        self._publish_soon(events)
        if requeued:
            self._dispatch_wanted.set()

    async def _settle_tasks(self, conn: AsyncConnection, task_ids: Iterable[str]) -> list[BusMessage]:
        """Recompute each task from its partitions and each touched request from its tasks."""
        task_ids = list(task_ids)
        if not task_ids:
            return []
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
            if is_final(task_row["state"]) and task_row["state"] == State.CANCELLED:
                continue
            state = aggregate(part_states[task_row["id"]], empty=State(task_row["state"]))
            if state != task_row["state"]:
                await conn.execute(update(tasks).where(tasks.c.id == task_row["id"]).values(state=state))
                events.append(_task_status(task_row, state, task_row["state"]))
                request_ids.add(task_row["request_id"])
        for request_id in request_ids:
            events += await self._settle_request(conn, request_id)
        return events

    async def _settle_request(self, conn: AsyncConnection, request_id: str) -> list[BusMessage]:
        row = (
            (await conn.execute(select(requests).where(requests.c.id == request_id).with_for_update())).mappings().one()
        )
        states = (await conn.execute(select(tasks.c.state).where(tasks.c.request_id == request_id))).scalars().all()
        state = _request_state(states)
        if state == row["state"] or row["state"] == State.CANCELLED:
            return []
        await conn.execute(update(requests).where(requests.c.id == request_id).values(state=state, updated_at=utcnow()))
        return [_request_status(request_id, row["job_id"], state, row["state"])]

    # -- lost runs --------------------------------------------------------------------------

    async def _in_flight_loop(self) -> None:
        while True:
            await asyncio.sleep(self.in_flight_check_interval)
            try:
                await self.release_stale_claims()
                await self.check_in_flight(grace=self.dispatch_timeout)
            except Exception:
                log.exception("in-flight check failed")

    async def release_stale_claims(self, everything: bool = False) -> None:
        """Claims of a scheduler that died between claiming and offering go back to the queue.

        Re-offering such a partition is safe: the offer carries the same run id, and a run the
        provisioner already took is answered "already accepted".
        """
        stale: ColumnElement[bool] = partitions.c.claimed_by.is_not(None)
        if not everything:
            stale = stale & (partitions.c.claimed_at < utcnow() - timedelta(seconds=CLAIM_TIMEOUT))
        async with self.db.begin() as conn:
            released = (await conn.execute(update(partitions).where(stale).values(claimed_by=None))).rowcount
        if released:
            log.warning("released %d stale claims", released)
            self._dispatch_wanted.set()

    async def check_in_flight(self, grace: float) -> None:
        """Ask the executioner about runs we have heard nothing of; a run it never got is lost."""
        async with self.db.begin() as conn:
            rows = (await conn.execute(select(partitions).where(partitions.c.state.in_(IN_FLIGHT)))).mappings().all()
        now = utcnow()
        for row in rows:
            since = aware(row["started_at"] or row["dispatched_at"] or row["queued_at"])
            if grace and since and (now - since).total_seconds() < grace:
                continue
            run_id = run_id_of(row["id"], row["run"])
            run = await self.executioner.get_run(run_id)
            if run is None:
                status = _lost(row, "the run was lost before it reached the executioner")
            elif is_final(run.state):
                status = run
            else:
                continue
            await self._status_batcher.submit(status)

    # -- cancel -----------------------------------------------------------------------------

    async def cancel_request(self, request_id: str) -> TaskRequest:
        await self._cancel(
            requests.c.id == request_id, partitions.c.request_id == request_id, tasks.c.request_id == request_id
        )
        return await self.get_request(request_id)

    async def cancel_job(self, job_id: str) -> list[str]:
        await self._cancel(requests.c.job_id == job_id, partitions.c.job_id == job_id, tasks.c.job_id == job_id)
        return [r.id for r in await self.list_requests(job_id=job_id)]

    async def _cancel(self, request_clause: Any, partition_clause: Any, task_clause: Any) -> None:
        now = utcnow()
        events: list[BusMessage] = []
        async with self.db.begin() as conn:
            found = (await conn.execute(select(requests).where(request_clause))).mappings().all()
            if not found:
                raise NotFound("no such task request or job")
            parts = (
                (
                    await conn.execute(
                        select(partitions).where(partition_clause, partitions.c.state.not_in(list(FINAL_STATES)))
                    )
                )
                .mappings()
                .all()
            )
            in_flight = [run_id_of(p["id"], p["run"]) for p in parts if p["state"] in IN_FLIGHT]
            for part in parts:
                row = dict(part) | {"state": State.CANCELLED, "finished_at": now, "message": "cancelled"}
                await conn.execute(
                    update(partitions)
                    .where(partitions.c.id == part["id"])
                    .values(state=State.CANCELLED, finished_at=now, message="cancelled", claimed_by=None)
                )
                definition, project, revision = await self._definition(conn, part["task_id"])
                events.append(
                    _partition_status(
                        records.partition_from_row(row),
                        part["state"],
                        definition.name,
                        {"project": project, "revision": revision},
                    )
                )
            for task_row in (
                (await conn.execute(select(tasks).where(task_clause, tasks.c.state.not_in(list(FINAL_STATES)))))
                .mappings()
                .all()
            ):
                await conn.execute(update(tasks).where(tasks.c.id == task_row["id"]).values(state=State.CANCELLED))
                events.append(_task_status(task_row, State.CANCELLED, task_row["state"]))
            for request_row in found:
                if not is_final(request_row["state"]):
                    await conn.execute(
                        update(requests)
                        .where(requests.c.id == request_row["id"])
                        .values(state=State.CANCELLED, updated_at=now)
                    )
                    events.append(
                        _request_status(request_row["id"], request_row["job_id"], State.CANCELLED, request_row["state"])
                    )
        await self._publish(events)
        if in_flight:
            try:
                await self.provisioner.cancel(in_flight)
            except ServiceError as error:
                log.warning("could not stop cancelled runs %s: %s", in_flight, error)

    # -- publishing -------------------------------------------------------------------------

    async def _publish(self, events: list[BusMessage]) -> None:
        await self.bus.publish_all((*_address(event), event.wire()) for event in events)

    def _publish_soon(self, events: list[BusMessage]) -> None:
        """Publish what was just committed without waiting for the broker's confirms.

        RabbitMQ confirms a persistent message once it is on disk, some 50 ms later under load;
        a dispatch round or a batch of run news that waited for that spent most of its time
        waiting. Messages still leave in the order they were handed over (one channel, written
        in order), so a partition's `dispatched` is never overtaken by its `running`.
        """
        if events:
            self._publishing.spawn(self._publish_logged(events), name="scheduler-publish")

    async def _publish_logged(self, events: list[BusMessage]) -> None:
        try:
            await self._publish(events)
        except Exception:  # nobody awaits this; say it here
            log.exception("could not publish status changes")


_MUTABLE = (
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
_UPDATE_PARTITION = (
    update(partitions).where(partitions.c.id == bindparam("b_id")).values({k: bindparam(f"b_{k}") for k in _MUTABLE})
)


def _transition(row: dict[str, Any], status: RunStatus, retries: int) -> dict[str, Any] | None:
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


def _lost(row: Any, why: str) -> RunStatus:
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


def _request_state(task_states: Iterable[str]) -> State:
    states = [State.COMPLETED if s == State.SKIPPED else s for s in task_states]
    return aggregate(states)


def _task_status(row: Any, state: State, previous: State | str | None, message: str | None = None) -> TaskStatus:
    return TaskStatus(
        task_id=row["id"],
        request_id=row["request_id"],
        job_id=row["job_id"],
        name=row["name"],
        state=state,
        previous_state=None if previous is None else State(previous),
        message=message,
    )


def _request_status(request_id: str, job_id: str | None, state: State, previous: State | None) -> RequestStatus:
    return RequestStatus(request_id=request_id, job_id=job_id, state=state, previous_state=previous)


def _partition_status(
    part: TaskPartition, previous: State | str | None, task_name: str, request: Any
) -> PartitionStatus:
    return PartitionStatus(
        previous_state=None if previous is None else State(previous),
        task_name=task_name,
        project=request["project"],
        revision=request["revision"],
        partition=part,
    )


def _address(event: BusMessage) -> tuple[str, str]:
    if isinstance(event, PartitionStatus):
        p = event.partition
        return topics.PARTITIONS, topics.routing_key(p.job_id, p.task_id, p.id, p.run, p.container_type, p.state)
    if isinstance(event, TaskStatus):
        return topics.TASKS, topics.routing_key(event.job_id, event.task_id, state=event.state)
    if isinstance(event, RequestStatus):
        return topics.REQUESTS, topics.routing_key(event.job_id, state=event.state)
    raise TypeError(f"the scheduler does not publish {type(event).__name__}")


async def _wait(event: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        pass
    event.clear()
