"""The job master's metrics (`GET /metrics`): pushes by outcome, jobs by state (an aggregate query
when scraped), how long ended jobs took, and the bus's counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from sqlalchemy import func, select

from infrax.bus import Bus
from infrax.model import State
from infrax.store import Database
from infrax.store.tables import jobs

JOB_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)


class JobMasterMetrics:
    def __init__(self, db: Database, bus: Bus) -> None:
        self.db = db
        self.registry = CollectorRegistry()
        bus.metrics.register(self.registry)
        self.pushes = Counter(
            "infrax_jobmaster_pushes",
            "Pushes, by outcome: a new job, a job the revision had already, refused.",
            ["outcome"],
            registry=self.registry,
        )
        self.jobs = Gauge("infrax_jobmaster_jobs", "Jobs by state.", ["state"], registry=self.registry)
        self.durations = Histogram(
            "infrax_jobmaster_job_duration_seconds",
            "Seconds from a job's push to its end, by how it ended.",
            ["state"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )

    async def refresh(self) -> None:
        async with self.db.reading() as conn:
            query = select(jobs.c.state, func.count()).group_by(jobs.c.state)
            counts: dict[str, int] = {state: count for state, count in (await conn.execute(query)).all()}
        for state in State:
            self.jobs.labels(state.value).set(counts.get(state.value, 0))
