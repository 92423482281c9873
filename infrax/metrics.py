"""`GET /metrics` on every component, through prometheus_client.

Each component has a registry of its own (`infrax up` holds five components, and a test run a
hundred stacks, in one process: the library's global registry would mix them and refuse the second
of each name). What a component counts as it happens (bus messages, dispatches) are the library's
counters and histograms in that registry; what it knows at any time (queue depth, partitions by
state) is read when scraped, by a collector or by the route refreshing its gauges first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client
from fastapi import FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

# `_created` series double every counter's lines and no dashboard of ours reads them.
prometheus_client.disable_created_metrics()


def metrics_route(
    app: FastAPI,
    registry: CollectorRegistry,
    options: dict[str, Any],
    refresh: Callable[[], Awaitable[None]] | None = None,
    description: str = "",
) -> None:
    """`GET /metrics`: the registry in Prometheus' text format, its gauges refreshed first."""

    async def metrics() -> Response:
        if refresh is not None:
            await refresh()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    metrics.__doc__ = f"Prometheus text format: {description}" if description else "Prometheus text format."
    app.add_api_route("/metrics", metrics, methods=["GET"], response_class=Response, **options)
