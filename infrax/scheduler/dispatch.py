"""Dispatching: claim queued partitions, offer them to the provisioner, mark the accepted ones."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.auth.runs import RunTokens
from infrax.bus import Message
from infrax.bus.messages import ContainerEvent
from infrax.model import CheckoutOptions, FetchSource, PartitionOffer, State, TaskDefinition, run_id_of, utcnow
from infrax.outbox import Outbox
from infrax.provisioner.client import ProvisionerClient
from infrax.scheduler import fair_share, records
from infrax.scheduler.definitions import TaskDefinitions
from infrax.scheduler.events import outgoing, partition_status
from infrax.scheduler.fair_share import ProjectShare
from infrax.scheduler.metrics import SchedulerMetrics
from infrax.store import Database
from infrax.store.tables import partitions, tasks

log = logging.getLogger(__name__)

DISPATCH_BATCH = 64


class Dispatching:
    db: Database
    outbox: Outbox
    metrics: SchedulerMetrics
    provisioner: ProvisionerClient
    run_tokens: RunTokens | None
    instance: str
    projects: Mapping[str, ProjectShare]
    _definitions: TaskDefinitions
    _dispatch_wanted: asyncio.Event
    _blocked_types: dict[str, float]
    _free: dict[str, int]
    _free_checked: float
    # Claims this scheduler could not give back when its offer ended (the database was away): a
    # claim is only held while offering, so these go back at the next round, or no one would
    # ever offer those partitions again (a live scheduler's claims are not released by others).
    _unclaim_later: set[str]

    async def dispatch_batch(self) -> bool:
        """Offer as many queued partitions as the provisioner says it can take; True if more may follow."""
        if self._unclaim_later:
            await self._unclaim(list(self._unclaim_later))
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
                held = await self._held_by_limited(conn, container_type)
                full = [p for p, (limit, holding) in held.items() if holding >= limit]
                claimable = (
                    select(partitions.c.id)
                    .where(*fair_share.claimable(container_type))
                    .order_by(partitions.c.fair_key, partitions.c.seq)
                    .limit(min(room, DISPATCH_BATCH))
                    .with_for_update(skip_locked=True)
                )
                if full:
                    claimable = claimable.where(partitions.c.project.not_in(full))
                rows = (
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
                claimed += await self._within_limits(conn, rows, held)
            if not claimed:
                return False
            claimed = sorted(claimed, key=lambda p: (p["fair_key"], p["seq"]))
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
        offered = {o.partition_id: o for o in offers}
        try:
            await self._mark_dispatched(accepted_ids, offered)
        except BaseException:
            # Accepted, but not marked: offered again later, the provisioner answers "already accepted".
            self._unclaim_later.update(accepted_ids)
            raise
        return True

    async def _held_by_limited(self, conn: AsyncConnection, container_type: str) -> dict[str, tuple[int, int]]:
        """Projects with a limit on the type: (their limit, containers of it their runs hold now)."""
        limited = {p: limit for p, share in self.projects.items() if (limit := share.limit(container_type)) is not None}
        if not limited:
            return {}
        holding: dict[str, int] = dict(
            (
                await conn.execute(
                    select(partitions.c.project, func.count())
                    .where(
                        partitions.c.project.in_(limited),
                        partitions.c.container_type == container_type,
                        partitions.c.state.in_([State.DISPATCHED, State.RUNNING]),
                    )
                    .group_by(partitions.c.project)
                )
            ).all()
        )
        return {p: (limit, int(holding.get(p, 0))) for p, limit in limited.items()}

    async def _within_limits(
        self, conn: AsyncConnection, rows: Sequence[Any], held: dict[str, tuple[int, int]]
    ) -> list[Any]:
        """The claimed rows a project's limit allows; the rest given back at once (a claim takes a
        batch, and a limited project may have had room for fewer)."""
        if not held:
            return list(rows)
        kept, over, taking = [], [], dict.fromkeys(held, 0)
        for row in sorted(rows, key=lambda p: (p["fair_key"], p["seq"])):
            project = row["project"]
            if project in held:
                limit, holding = held[project]
                if holding + taking[project] >= limit:
                    over.append(row["id"])
                    continue
                taking[project] += 1
            kept.append(row)
        if over:
            await conn.execute(update(partitions).where(partitions.c.id.in_(over)).values(claimed_by=None))
        return kept

    async def _mark_dispatched(self, accepted_ids: list[str], offered: dict[str, PartitionOffer]) -> None:
        now = utcnow()
        async with self.outbox.begin() as (conn, messages):
            # Locked in id order first, as a run's news is applied: a fast agent's `running` can be
            # applied while this marks its partition, and an UPDATE takes its rows in no order.
            await conn.execute(
                select(partitions.c.id)
                .where(partitions.c.id.in_(accepted_ids))
                .order_by(partitions.c.id)
                .with_for_update()
            )
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
                        .values(state=State.DISPATCHED, dispatched_at=now, claimed_by=None)
                        .returning(*partitions.c)
                    )
                )
                .mappings()
                .all()
            )
            self.metrics.dispatched(dispatched, now)
            if len(dispatched) < len(accepted_ids):
                await conn.execute(
                    update(partitions)
                    .where(partitions.c.id.in_(accepted_ids), partitions.c.claimed_by == self.instance)
                    .values(claimed_by=None)
                )
            messages += outgoing(
                partition_status(
                    records.partition_from_row(row),
                    State.QUEUED,
                    offered[row["id"]].task_name,
                    {"project": offered[row["id"]].project, "revision": offered[row["id"]].revision},
                )
                for row in dispatched
            )

    async def _unclaim(self, ids: list[str]) -> None:
        try:
            async with self.db.each_alone() as conn:
                await conn.execute(
                    update(partitions)
                    .where(partitions.c.id.in_(ids), partitions.c.claimed_by == self.instance)
                    .values(claimed_by=None)
                )
        except BaseException:
            self._unclaim_later.update(ids)
            raise
        self._unclaim_later.difference_update(ids)

    async def _offer_for(self, conn: AsyncConnection, part: Any) -> PartitionOffer:
        definition, project, revision, trusted = await self._definitions.get(conn, part["task_id"])
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
            trusted=trusted,
            fetches=await _fetch_sources(conn, part["request_id"], definition) if definition.fetches else [],
            checkout=_checkout(definition) if part["job_id"] is not None else None,
            tests=part.get("rerun_tests"),
            avoid_container=part.get("avoid_container"),
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


async def _fetch_sources(conn: AsyncConnection, request_id: str, definition: TaskDefinition) -> list[FetchSource]:
    """Each fetch with the runs that can give its artifact: its task's completed partitions' runs."""
    wanted = {f.task for f in definition.fetches}
    found = (
        await conn.execute(
            select(tasks.c.name, partitions.c.id, partitions.c.run)
            .join(partitions, partitions.c.task_id == tasks.c.id)
            .where(tasks.c.request_id == request_id, tasks.c.name.in_(wanted), partitions.c.state == State.COMPLETED)
            .order_by(partitions.c.idx)
        )
    ).all()
    runs: dict[str, list[str]] = {name: [] for name in wanted}
    for name, partition_id, run in found:
        runs[name].append(run_id_of(partition_id, run))
    return [FetchSource(task=f.task, artifact=f.artifact, run_ids=runs[f.task]) for f in definition.fetches]


def _checkout(definition: TaskDefinition) -> CheckoutOptions | None:
    if definition.checkout is False:
        return None
    return definition.checkout if isinstance(definition.checkout, CheckoutOptions) else CheckoutOptions()
