"""The scheduler's metrics (`GET /metrics`): the queue by priority, by container type and
project (with its oldest wait) and partitions by state (aggregate queries when scraped), how long
partitions waited to be dispatched (a histogram, and the recent waits' percentiles), and the bus's
counts."""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from sqlalchemy import func, select

from infrax.bus import Bus
from infrax.model import State, utcnow
from infrax.store import Database, aware
from infrax.store.tables import partitions

# Seconds from queued to dispatched: a warm container takes a partition in milliseconds, a queue
# behind busy containers for as long as they are busy.
DISPATCH_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
RECENT_WAITS = 1000  # per container type and project, for the percentiles read without Prometheus
QUANTILES = (0.5, 0.9, 0.99)


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
        self.queue_wait = Histogram(
            "infrax_scheduler_queue_wait_seconds",
            "Seconds a partition run waited from queued to dispatched, by container type and project.",
            ["container_type", "project"],
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self.recent_wait = Gauge(
            "infrax_scheduler_queue_wait_recent_seconds",
            f"Percentiles of the last {RECENT_WAITS} waits from queued to dispatched, by container type and project.",
            ["container_type", "project", "quantile"],
            registry=self.registry,
        )
        self.queued_by_project = Gauge(
            "infrax_scheduler_queued_by_project",
            "Partitions waiting for a container, by container type and project.",
            ["container_type", "project"],
            registry=self.registry,
        )
        self.oldest_wait = Gauge(
            "infrax_scheduler_oldest_queued_seconds",
            "Seconds the longest-waiting queued partition has waited, by container type and project.",
            ["container_type", "project"],
            registry=self.registry,
        )
        self._waits: dict[tuple[str, str], deque[float]] = defaultdict(lambda: deque(maxlen=RECENT_WAITS))

    def dispatched(self, rows: Iterable[Any], at: datetime) -> None:
        for row in rows:
            queued = aware(row["queued_at"])
            if queued is not None:
                waited = max(0.0, (at - queued).total_seconds())
                project = row.get("project") or ""
                self.dispatch_latency.labels(row["container_type"]).observe(waited)
                self.queue_wait.labels(row["container_type"], project).observe(waited)
                self._waits[(row["container_type"], project)].append(waited)

    async def refresh(self) -> None:
        by_priority = (
            select(partitions.c.priority, func.count())
            .where(partitions.c.state == State.QUEUED)
            .group_by(partitions.c.priority)
        )
        by_project = (
            select(partitions.c.container_type, partitions.c.project, func.count(), func.min(partitions.c.queued_at))
            .where(partitions.c.state == State.QUEUED)
            .group_by(partitions.c.container_type, partitions.c.project)
        )
        async with self.db.reading() as conn:
            queued = (await conn.execute(by_priority)).all()
            projects = (await conn.execute(by_project)).all()
        states = await self.counts()
        self.queued.clear()
        for priority, count in queued:
            self.queued.labels(str(priority)).set(count)
        now = utcnow()
        self.queued_by_project.clear()
        self.oldest_wait.clear()
        for container_type, project, count, oldest in projects:
            self.queued_by_project.labels(container_type, project or "").set(count)
            if oldest is not None:
                self.oldest_wait.labels(container_type, project or "").set((now - aware(oldest)).total_seconds())
        for (container_type, project), waits in list(self._waits.items()):
            cuts = statistics.quantiles(waits, n=100, method="inclusive") if len(waits) > 1 else [waits[0]] * 99
            for quantile in QUANTILES:
                self.recent_wait.labels(container_type, project, str(quantile)).set(cuts[round(quantile * 100) - 1])
        for state in State:
            self.by_state.labels(state.value).set(states.get(state.value, 0))
