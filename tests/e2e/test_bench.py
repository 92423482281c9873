"""`make bench` itself: a small run of the embedded benchmark must finish and report figures that agree."""

from __future__ import annotations

import pytest
from rich.console import Console

from infrax.bench import run_bench


async def test_a_small_embedded_bench_reports_its_figures() -> None:
    console = Console(record=True, width=140)
    figures = await run_bench(console, partitions=20, containers=2)  # raises unless every partition completed
    assert figures["partitions"] == 20
    # The throughput is what the burst did: its partitions over its wall time, as the table prints it.
    assert figures["seconds"] > 0
    assert figures["throughput"] == pytest.approx(figures["partitions"] / figures["seconds"])
    assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["p99_ms"]
    assert figures["infrax_cpu_ms"] > 0 and figures["agents_cpu_ms"] > 0
    text = console.export_text()
    assert "all partitions final  " in text and "completed" in text
    assert f"{figures['throughput']:.0f} partitions/s" in text
    assert f"{figures['seconds']:.2f} s" in text
    assert f"{figures['p99_ms']:.1f} ms" in text
    assert "CPU per partition in the burst, agents and their bootstrappers" in text
