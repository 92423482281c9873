"""`make bench` itself: a small run of the embedded benchmark must finish and report sane figures."""

from __future__ import annotations

from rich.console import Console

from infrax.bench import run_bench


async def test_a_small_embedded_bench_reports_its_figures() -> None:
    console = Console(record=True, width=140)
    figures = await run_bench(console, partitions=20, containers=2)
    assert figures["partitions"] == 20
    assert figures["throughput"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    assert figures["infrax_cpu_ms"] > 0 and figures["agents_cpu_ms"] > 0
    text = console.export_text()
    assert "all partitions final" in text and "completed" in text
    assert "CPU per partition in the burst, agents and their bootstrappers" in text
