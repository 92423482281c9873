"""The optimizer's metrics (`GET /metrics`): plans made and how long each took, and the bus's counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from infrax.bus import Bus

PLAN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class OptimizerMetrics:
    def __init__(self, bus: Bus) -> None:
        self.registry = CollectorRegistry()
        bus.metrics.register(self.registry)
        self.planning = Histogram(
            "infrax_optimizer_planning_seconds",
            "Seconds to make a plan, by where: inline, or in the planning worker (large requests).",
            ["where"],
            buckets=PLAN_BUCKETS,
            registry=self.registry,
        )
