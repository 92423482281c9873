"""The executioner's metrics (`GET /metrics`): runs followed now, runs ended by state and their
durations, and the bus's counts."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from infrax.bus import Bus

RUN_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


class ExecutionerMetrics:
    def __init__(self, bus: Bus, active: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        bus.metrics.register(self.registry)
        self.active = Gauge(
            "infrax_executioner_active_runs", "Runs this executioner follows now.", registry=self.registry
        )
        self.active.set_function(lambda: float(active()))
        self.ended = Counter("infrax_executioner_runs", "Runs ended, by state.", ["state"], registry=self.registry)
        self.durations = Histogram(
            "infrax_executioner_run_duration_seconds",
            "Seconds a run took, from its start in the agent to its exit, by state.",
            ["state"],
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )

    def run_ended(self, state: str, duration: float | None) -> None:
        self.ended.labels(state).inc()
        if duration is not None:
            self.durations.labels(state).observe(duration)
