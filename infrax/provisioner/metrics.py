"""The provisioner's metrics (`GET /metrics`): what it holds and does, read from its state when scraped."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from infrax.model import ContainerState

if TYPE_CHECKING:
    from infrax.provisioner.service import Provisioner

# Seconds from asking a provider for a container to its agent being ready.
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
CONTAINER_STATES = (ContainerState.STARTING, ContainerState.IDLE, ContainerState.BUSY, ContainerState.STOPPING)


def start_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "infrax_provisioner_container_start_seconds",
        "Seconds from asking a provider for a container to its agent being ready.",
        ["provider"],
        buckets=START_BUCKETS,
        registry=registry,
    )


class ProvisionerCollector(Collector):
    def __init__(self, provisioner: Provisioner) -> None:
        self.p = provisioner

    def collect(self) -> Iterator[Metric]:
        p = self.p
        partitions = CounterMetricFamily(
            "infrax_provisioner_partitions",
            "Partition runs offered, by answer.",
            labels=["outcome"],
        )
        for outcome in ("accepted", "rejected"):
            partitions.add_metric([outcome], p.counters[outcome])
        yield partitions
        offers = CounterMetricFamily(
            "infrax_provisioner_offers",
            "Partition runs offered, by container type and answer.",
            labels=["type", "outcome"],
        )
        for (type_name, outcome), n in sorted(p.offers.items()):
            offers.add_metric([type_name, outcome], n)
        yield offers
        rejections = CounterMetricFamily(
            "infrax_provisioner_rejections",
            "Partition runs rejected, by container type and why.",
            labels=["type", "reason"],
        )
        for (type_name, why), n in sorted(p.rejections.items()):
            rejections.add_metric([type_name, why], n)
        yield rejections

        containers = GaugeMetricFamily(
            "infrax_provisioner_containers",
            "Containers by type, provider and state.",
            labels=["type", "provider", "state"],
        )
        by_key = Counter((s.type.name, s.provider.name, s.state.value) for s in p.slots.values())
        for type_name, container_type in sorted(p.types.items()):
            for provider_name in container_type.providers:
                for state in CONTAINER_STATES:
                    containers.add_metric(
                        [type_name, provider_name, state.value], by_key.get((type_name, provider_name, state.value), 0)
                    )
        yield containers

        recent = GaugeMetricFamily(
            "infrax_provisioner_container_start_recent_seconds",
            "Median and 95th percentile of the provider's last 256 starts.",
            labels=["provider", "quantile"],
        )
        for name, provider in sorted(p.providers.items()):
            starts = list(provider.start_durations)
            if len(starts) >= 2:
                cuts = statistics.quantiles(starts, n=20, method="inclusive")
                recent.add_metric([name, "0.5"], statistics.median(starts))
                recent.add_metric([name, "0.95"], cuts[18])
        yield recent
        failures = CounterMetricFamily(
            "infrax_provisioner_container_start_failures",
            "Container starts that failed.",
            labels=["provider"],
        )
        for name in sorted(p.providers):
            failures.add_metric([name], p.provider_health[name].total_failures)
        yield failures
        lost = CounterMetricFamily(
            "infrax_provisioner_containers_lost",
            "Containers found dead by health checks: gone, or not answering heartbeats.",
            labels=["provider", "reason"],
        )
        for (name, why), n in sorted(p.lost.items()):
            lost.add_metric([name, why], n)
        yield lost
        heartbeats = CounterMetricFamily(
            "infrax_provisioner_heartbeats",
            "Heartbeats sent to agents, and those that failed.",
            labels=["outcome"],
        )
        heartbeats.add_metric(["sent"], p.health.heartbeats)
        heartbeats.add_metric(["failed"], p.health.heartbeat_failures)
        yield heartbeats

        now = p.clock()
        up = GaugeMetricFamily(
            "infrax_provisioner_provider_up",
            "1 when the provider may be asked for containers, 0 while it rests after failed starts.",
            labels=["provider"],
        )
        held = GaugeMetricFamily(
            "infrax_provisioner_provider_containers",
            "Containers a provider holds (starting, idle, busy).",
            labels=["provider"],
        )
        capacity = GaugeMetricFamily(
            "infrax_provisioner_provider_capacity",
            "Containers a provider may hold at once.",
            labels=["provider"],
        )
        for name, provider in sorted(p.providers.items()):
            up.add_metric([name], int(p.provider_health[name].usable(now)))
            held.add_metric([name], p.used(provider))
            if provider.capacity is not None:
                capacity.add_metric([name], provider.capacity)
        yield up
        yield held
        yield capacity
