"""The workers' metrics, on the provisioner's `GET /metrics`: who is there, what they may run, and
the beats heard (what a thousand idle workers cost is mostly those)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from infrax.fleet.gateway import Gateway


class WorkerCollector(Collector):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway
        workers = GaugeMetricFamily(
            "infrax_workers",
            "Workers of each pool that joined: present (heard from lately), away (within or past the grace), draining.",
            labels=["pool", "state"],
        )
        capacity = GaugeMetricFamily(
            "infrax_workers_capacity",
            "Containers the pool's present workers that are not draining may run.",
            labels=["pool"],
        )
        by_state: Counter[tuple[str, str]] = Counter()
        pools = sorted({link.pool for link in gateway.workers.values()} | set(gateway.beats))
        for link in gateway.workers.values():
            by_state[link.pool, "present" if gateway.present(link) else "away"] += 1
            by_state[link.pool, "draining"] += link.draining
        for pool in pools:
            for state in ("present", "away", "draining"):
                workers.add_metric([pool, state], by_state[pool, state])
            capacity.add_metric([pool], gateway.capacity(pool))
        yield workers
        yield capacity
        beats = CounterMetricFamily("infrax_worker_beats", "Beats heard from the pool's workers.", labels=["pool"])
        for pool in pools:
            beats.add_metric([pool], gateway.beats[pool])
        yield beats
