"""What a bus connection has published and consumed, for `/metrics`: its rates are Prometheus's
`rate()` of these counters. One set per bus object; in `infrax up` every component shares the
process's bus, so each component's `/metrics` shows the same counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class BusMetrics:
    def __init__(self) -> None:
        # Made without a registry: each component's registry registers these same counters.
        self.published = Counter(
            "infrax_bus_published", "Messages the broker took (confirmed), by exchange.", ["exchange"], registry=None
        )
        self.publish_failures = Counter(
            "infrax_bus_publish_failures",
            "Messages a publish could not hand to the broker (after its retries), by exchange.",
            ["exchange"],
            registry=None,
        )
        self.consumed = Counter(
            "infrax_bus_consumed", "Messages handled and acknowledged, by consumer.", ["consumer"], registry=None
        )
        self.handler_failures = Counter(
            "infrax_bus_handler_failures",
            "Deliveries whose handler raised (the message is delivered again), by consumer.",
            ["consumer"],
            registry=None,
        )
        self.dead_lettered = Counter(
            "infrax_bus_dead_lettered",
            "Messages set aside: refused on receipt, or their handler failed every delivery; by consumer.",
            ["consumer"],
            registry=None,
        )

    def register(self, registry: CollectorRegistry) -> None:
        for counter in (
            self.published,
            self.publish_failures,
            self.consumed,
            self.handler_failures,
            self.dead_lettered,
        ):
            registry.register(counter)
