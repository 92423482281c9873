"""The provisioner's metrics in Prometheus' text format (`GET /metrics`)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import TYPE_CHECKING

from infrax.model import ContainerState

if TYPE_CHECKING:
    from infrax.provisioner.service import Provisioner

# Seconds from asking a provider for a container to its agent being ready.
START_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class Histogram:
    """A cumulative Prometheus histogram of one series."""

    def __init__(self, buckets: tuple[float, ...] = START_BUCKETS) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1

    def lines(self, name: str, labels: str) -> list[str]:
        pairs = zip(self.buckets, self.counts, strict=True)
        out = [f'{name}_bucket{{{labels},le="{bound:g}"}} {n}' for bound, n in pairs]
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {self.count}')
        out.append(f"{name}_sum{{{labels}}} {self.sum:.6f}")
        out.append(f"{name}_count{{{labels}}} {self.count}")
        return out


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(provisioner: Provisioner) -> str:
    p = provisioner
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    family("infrax_provisioner_partitions_total", "counter", "Partition runs offered, by answer.")
    for outcome in ("accepted", "rejected"):
        lines.append(f'infrax_provisioner_partitions_total{{outcome="{outcome}"}} {p.counters[outcome]}')
    family("infrax_provisioner_offers_total", "counter", "Partition runs offered, by container type and answer.")
    for (type_name, outcome), n in sorted(p.offers.items()):
        lines.append(f'infrax_provisioner_offers_total{{type="{_label(type_name)}",outcome="{outcome}"}} {n}')
    family("infrax_provisioner_rejections_total", "counter", "Partition runs rejected, by container type and why.")
    for (type_name, why), n in sorted(p.rejections.items()):
        lines.append(f'infrax_provisioner_rejections_total{{type="{_label(type_name)}",reason="{why}"}} {n}')

    family("infrax_provisioner_containers", "gauge", "Containers by type, provider and state.")
    by_key = Counter((s.type.name, s.provider.name, s.state.value) for s in p.slots.values())
    for type_name, container_type in sorted(p.types.items()):
        for provider_name in container_type.providers:
            for state in (ContainerState.STARTING, ContainerState.IDLE, ContainerState.BUSY, ContainerState.STOPPING):
                n = by_key.get((type_name, provider_name, state.value), 0)
                lines.append(
                    f'infrax_provisioner_containers{{type="{_label(type_name)}",'
                    f'provider="{_label(provider_name)}",state="{state.value}"}} {n}'
                )

    family(
        "infrax_provisioner_container_start_seconds",
        "histogram",
        "Seconds from asking a provider for a container to its agent being ready.",
    )
    for name in sorted(p.providers):
        lines += p.start_seconds[name].lines("infrax_provisioner_container_start_seconds", f'provider="{_label(name)}"')
    family(
        "infrax_provisioner_container_start_recent_seconds",
        "gauge",
        "Median and 95th percentile of the provider's last 256 starts.",
    )
    for name, provider in sorted(p.providers.items()):
        recent = list(provider.start_durations)
        if len(recent) >= 2:
            cuts = statistics.quantiles(recent, n=20, method="inclusive")
            for q, value in (("0.5", statistics.median(recent)), ("0.95", cuts[18])):
                lines.append(
                    f'infrax_provisioner_container_start_recent_seconds{{provider="{_label(name)}",'
                    f'quantile="{q}"}} {value:.6f}'
                )
    family("infrax_provisioner_container_start_failures_total", "counter", "Container starts that failed.")
    lines.append(f"infrax_provisioner_container_start_failures_total {p.counters['start_failures']}")
    for name in sorted(p.providers):
        lines.append(
            f'infrax_provisioner_container_start_failures_total{{provider="{_label(name)}"}} '
            f"{p.provider_health[name].total_failures}"
        )

    family(
        "infrax_provisioner_containers_lost_total",
        "counter",
        "Containers found dead by health checks: gone, or not answering heartbeats.",
    )
    for (name, why), n in sorted(p.lost.items()):
        lines.append(f'infrax_provisioner_containers_lost_total{{provider="{_label(name)}",reason="{why}"}} {n}')
    family("infrax_provisioner_heartbeats_total", "counter", "Heartbeats sent to agents, and those that failed.")
    lines.append(f'infrax_provisioner_heartbeats_total{{outcome="sent"}} {p.health.heartbeats}')
    lines.append(f'infrax_provisioner_heartbeats_total{{outcome="failed"}} {p.health.heartbeat_failures}')

    family(
        "infrax_provisioner_provider_up",
        "gauge",
        "1 when the provider may be asked for containers, 0 while it rests after failed starts.",
    )
    now = p.clock()
    for name in sorted(p.providers):
        lines.append(
            f'infrax_provisioner_provider_up{{provider="{_label(name)}"}} {int(p.provider_health[name].usable(now))}'
        )
    family("infrax_provisioner_provider_containers", "gauge", "Containers a provider holds (starting, idle, busy).")
    for name, provider in sorted(p.providers.items()):
        lines.append(f'infrax_provisioner_provider_containers{{provider="{_label(name)}"}} {p.used(provider)}')
    family("infrax_provisioner_provider_capacity", "gauge", "Containers a provider may hold at once.")
    for name, provider in sorted(p.providers.items()):
        if provider.capacity is not None:
            lines.append(f'infrax_provisioner_provider_capacity{{provider="{_label(name)}"}} {provider.capacity}')
    return "\n".join(lines) + "\n"
