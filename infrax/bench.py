"""`make bench`: N trivial partitions through the whole pipeline on warm containers."""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table
from yarl import URL

from infrax.bus import Message, topics
from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import ContainerType, TaskDefinition, TaskPartition, TaskRequestSubmission, is_final
from infrax.private import passable_temp_dir
from infrax.scheduler.client import SchedulerClient
from infrax.stack import Stack

TRIVIAL = "#!/bin/sh\nexit 0\n"
# Single-partition requests per second for the latency figure: a steady load the pool serves without
# a queue, so the figure is the cost of dispatch itself, not of waiting for a container.
PACED_RATE = 20


async def run_bench_on(
    console: Console, backend: str, partitions: int, containers: int, postgres: str, amqp: str
) -> dict[str, float]:
    if backend == "embedded":
        return await run_bench(console, partitions, containers)
    if backend != "production":
        raise ValueError(f"unknown backend {backend!r}: embedded or production")
    async with throwaway_backends(postgres, amqp, "infrax_bench") as (db, bus):
        return await run_bench(console, partitions, containers, db=db, bus=bus)


@asynccontextmanager
async def throwaway_backends(postgres: str, amqp: str, prefix: str) -> AsyncIterator[tuple[str, str]]:
    """A PostgreSQL database and a RabbitMQ vhost of the run's own, dropped after: (db, bus) URLs."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(f"{postgres}/postgres")
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        async with _throwaway_vhost(amqp, name) as bus:
            yield f"{postgres}/{name}", bus
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@asynccontextmanager
async def _throwaway_vhost(amqp: str, name: str) -> AsyncIterator[str]:
    """A vhost of the run's own, deleted after: durable queues left bound to `#` by earlier runs
    would otherwise take a copy of every message, and the broker's work grows run by run."""
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("the production benchmark needs rabbitmqctl to make a throwaway vhost")
    url = URL(amqp)

    async def ctl(*args: str) -> None:
        process = await asyncio.create_subprocess_exec(
            "rabbitmqctl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        _, err = await process.communicate()
        if process.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {err.decode(errors='replace').strip()}")

    await ctl("add_vhost", name)
    try:
        await ctl("set_permissions", "-p", name, url.user or "guest", ".*", ".*", ".*")
        yield str(url.with_path("/" + name, encoded=False))
    finally:
        await ctl("delete_vhost", name)


async def run_bench(
    console: Console, partitions: int, containers: int, db: str | None = None, bus: str | None = None
) -> dict[str, float]:
    root = passable_temp_dir("infrax-bench-")  # the containers' task users reach their folders below it
    bootstrapper = root / "trivial.sh"
    bootstrapper.write_text(TRIVIAL)
    bootstrapper.chmod(0o755)
    config = Config(
        data_dir=root / "data",
        db=db or "",
        bus=bus or "memory://",
        ports={n: 0 for n in COMPONENTS},
        container_types=[
            ContainerType(
                name="bench", tags=["bench"], max_concurrent=containers, min_warm=containers, idle_timeout=3600
            )
        ],
        providers=[ProviderConfig("process")],
    )
    stack = Stack(config, serve=False)
    await stack.start()
    try:
        return await _measure(console, stack, str(bootstrapper), partitions, containers)
    finally:
        await stack.stop()


async def _measure(
    console: Console, stack: Stack, bootstrapper: str, partitions: int, containers: int
) -> dict[str, float]:
    provisioner = stack.services["provisioner"]
    started = time.monotonic()
    while sum(1 for c in provisioner.containers() if c.state == "idle") < containers:  # noqa: ASYNC110
        await asyncio.sleep(0.05)  # the provisioner announces no "pool full": polled, only before measuring
    warm_seconds = time.monotonic() - started
    console.print(f"{containers} warm containers ready in {warm_seconds:.2f}s")

    finished = asyncio.Event()
    request_ids: set[str] = set()

    async def on_request(message: Message) -> None:
        if message.body["requestId"] in request_ids and is_final(message.body["state"]):
            finished.set()

    assert stack.bus is not None
    subscription = await stack.bus.subscribe("bench", topics.REQUESTS, ["#"], on_request)
    scheduler = SchedulerClient(stack.client("scheduler", token=stack.admin_token))
    per_task = 1000
    tasks = [
        TaskDefinition(
            name=f"trivial-{i // per_task}",
            files=[f"f{j}" for j in range(i, min(i + per_task, partitions))],
            container_tag=["bench"],
            bootstrapper=bootstrapper,
            partitions=min(per_task, partitions - i),
            max_partitions=1000,
        )
        for i in range(0, partitions, per_task)
    ]
    agent_ids = [c.id for c in provisioner.containers()]
    cpu_before = _own_cpu_seconds(), _agents_cpu_seconds(agent_ids, stack)
    t0 = time.monotonic()
    request = await scheduler.submit(TaskRequestSubmission(tasks=tasks))
    request_ids.add(request.id)
    await asyncio.wait_for(finished.wait(), timeout=max(120, partitions / 10))
    elapsed = time.monotonic() - t0
    cpu_after = _own_cpu_seconds(), _agents_cpu_seconds(agent_ids, stack)
    await subscription.cancel()

    parts = await scheduler.partitions(request.id)
    states = {p.state for p in parts}
    queue_waits = _latencies(parts)
    latencies = await _paced_latencies(scheduler, bootstrapper, count=min(200, partitions), per_second=PACED_RATE)
    agent_peak_kb = max((_peak_kb(c.id, stack) for c in provisioner.containers()), default=0)
    figures = {
        "partitions": float(len(parts)),
        "seconds": elapsed,
        "throughput": len(parts) / elapsed,
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "p99_ms": _percentile(latencies, 99),
        "burst_queue_p50_ms": _percentile(queue_waits, 50),
        "infrax_cpu_ms": (cpu_after[0] - cpu_before[0]) * 1000 / len(parts),
        "agents_cpu_ms": (cpu_after[1] - cpu_before[1]) * 1000 / len(parts),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "agent_peak_rss_mb": agent_peak_kb / 1024,
    }
    table = Table(
        title=f"infrax bench: {len(parts)} trivial partitions, {containers} warm containers "
        f"({stack.config.db.split(':')[0]}, {stack.config.bus.split(':')[0]})",
        title_justify="left",
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("all partitions final", ", ".join(sorted(states)))
    table.add_row("wall time", f"{elapsed:.2f} s")
    table.add_row("throughput", f"{figures['throughput']:.0f} partitions/s")
    for p in (50, 95, 99):
        table.add_row(
            f"dispatch latency p{p} (queued → running; warm pool, {PACED_RATE} requests/s)",
            f"{figures[f'p{p}_ms']:.1f} ms",
        )
    table.add_row("time queued in the burst, p50 (waiting for a container)", f"{figures['burst_queue_p50_ms']:.0f} ms")
    table.add_row("CPU per partition in the burst, infrax process", f"{figures['infrax_cpu_ms']:.2f} ms")
    if figures["agents_cpu_ms"] > 0:
        table.add_row(
            "CPU per partition in the burst, agents and their bootstrappers", f"{figures['agents_cpu_ms']:.2f} ms"
        )
    table.add_row("peak memory, infrax process", f"{figures['peak_rss_mb']:.0f} MB")
    table.add_row("peak memory, one agent", f"{figures['agent_peak_rss_mb']:.0f} MB")
    console.print(table)
    if states != {"completed"}:
        raise RuntimeError(f"benchmark partitions ended as {states}, not all completed")
    return figures


def _latencies(parts: list[TaskPartition]) -> list[float]:
    return sorted((p.started_at - p.queued_at).total_seconds() * 1000 for p in parts if p.started_at and p.queued_at)


async def _paced_latencies(scheduler: SchedulerClient, bootstrapper: str, count: int, per_second: float) -> list[float]:
    """Single-partition requests at a steady rate below capacity: what one push waits for a warm container."""
    task = TaskDefinition(name="paced", files=["f"], container_tag=["bench"], bootstrapper=bootstrapper)
    request_ids = []
    for _ in range(count):
        request_ids.append((await scheduler.submit(TaskRequestSubmission(tasks=[task]))).id)
        await asyncio.sleep(1 / per_second)
    parts: list[TaskPartition] = []
    for request_id in request_ids:
        while True:
            request = await scheduler.get_request(request_id)
            if is_final(request.state):
                break
            await asyncio.sleep(0.05)
        parts += request.tasks[0].partitions
    return _latencies(parts)


def _percentile(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1]


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _agents_cpu_seconds(container_ids: list[str], stack: Stack) -> float:
    """CPU time of the process containers' agents, with the bootstrappers they ran and reaped (Linux)."""
    ticks = 0
    for container_id in container_ids:
        stat = _agent_proc(container_id, stack, "stat")
        if stat is not None:
            fields = stat.rpartition(")")[2].split()
            ticks += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def _peak_kb(container_id: str, stack: Stack) -> int:
    """VmHWM of a process container's agent (0 for other providers)."""
    status = _agent_proc(container_id, stack, "status") or ""
    line = next((x for x in status.splitlines() if x.startswith("VmHWM:")), "VmHWM: 0 kB")
    return int(line.split()[1])


def _agent_proc(container_id: str, stack: Stack, name: str) -> str | None:
    """`/proc/<pid>/<name>` of a process container's agent; None for other providers or a gone agent."""
    from infrax.provisioner.providers.process import agent_pid

    pid = agent_pid(stack.config.containers_root / "process" / container_id)
    try:
        return None if pid is None else Path(f"/proc/{pid}/{name}").read_text()
    except OSError:
        return None
