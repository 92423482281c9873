"""The scheduler's metrics (`GET /metrics`): the queue by priority and partitions by state (two
aggregate queries when scraped), how long partitions waited to be dispatched, and the bus's
counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from sqlalchemy import func, select

from infrax.bus import Bus
from infrax.model import State
from infrax.store import Database, aware
from infrax.store.tables import partitions

# Seconds from queued to dispatched: a warm container takes a partition in milliseconds, a queue
# behind busy containers for as long as they are busy.
DISPATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class SchedulerMetrics:
    def __init__(self, db: Database, bus: Bus, counts: Callable[[], Awaitable[dict[str, int]]]) -> None:
        self.db = db
        self.counts = counts  # partitions by state: the scheduler's own aggregate (`count_partitions`)
        self.registry = CollectorRegistry()
        bus.metrics.register(self.registry)
        self.queued = Gauge(
            "infrax_scheduler_queued_partitions",
            "Partitions waiting for a container, by priority.",
            ["priority"],
            registry=self.registry,
        )
        self.by_state = Gauge(
            "infrax_scheduler_partitions",
            "Partitions by state (of every request kept).",
            ["state"],
            registry=self.registry,
        )
        self.dispatch_latency = Histogram(
            "infrax_scheduler_dispatch_latency_seconds",
            "Seconds a partition run waited from queued to dispatched, by container type.",
            ["container_type"],
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )

    def dispatched(self, rows: Iterable[Any], at: datetime) -> None:
        for row in rows:
            queued = aware(row["queued_at"])
            if queued is not None:
                self.dispatch_latency.labels(row["container_type"]).observe(max(0.0, (at - queued).total_seconds()))

    async def refresh(self) -> None:
        by_priority = (
            select(partitions.c.priority, func.count())
            .where(partitions.c.state == State.QUEUED)
            .group_by(partitions.c.priority)
        )
        async with self.db.reading() as conn:
            queued = (await conn.execute(by_priority)).all()
        states = await self.counts()
        self.queued.clear()
        for priority, count in queued:
            self.queued.labels(str(priority)).set(count)
        for state in State:
            self.by_state.labels(state.value).set(states.get(state.value, 0))
