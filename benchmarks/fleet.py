"""`make bench-fleet`: a pool of workers on other hosts, as the control plane sees it. Figures only.

    .venv/bin/python benchmarks/fleet.py [--hosts 5] [--workers 5 --workers 50] [--capacity 2]
        [--partitions 10000] [--idle-workers 1000] [--backend embedded|production]

Hosts are network namespaces with a veth link of their own to this machine (tests/fleet/hosts.py;
root needed). The control plane, every component in this process as `infrax up` runs them, listens
where the hosts reach it; `infrax worker`s in the namespaces (spread evenly, `--capacity`
containers each, task code as the worker's own user) dial out to it.

For each worker count:
1. **Idle dispatch**: 50 single-partition requests, one every 0.1 s, on an idle pool: the
   partition's queued → running (the scheduler's own timestamps: queued when planned, running when
   its agent said so, through its worker's connection).
2. **Under load**: 10,000 trivial one-file partitions (10 tasks of 1,000) at once; meanwhile a
   probe of one partition of higher priority every 0.25 s, whose queued → running is the dispatch
   latency under load (it waits for the first container to come free, not for the backlog).
   Throughput is partitions completed per second, submit to the last one final; control-plane CPU
   is this process's user + system time over that span (the workers and agents are processes of
   their own) per partition.
3. **A thousand idle workers** (`--idle-workers`): one process in a namespace of its own holds that
   many `infrax worker` connections (the worker's own code, sharing one provider that is never
   asked: no work is queued), all dialling at once as after a control plane's restart. How long
   until all are present, the control plane's memory before they join and with them, its CPU and
   the beats it hears per second over 20 s at rest (read from its `/metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

from infrax.bench import throwaway_backends
from infrax.cli import run_event_loop
from infrax.cli_support import open_files_as_allowed
from infrax.collector import settle_after_start
from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import ContainerType
from infrax.private import passable_temp_dir
from infrax.stack import Stack

POOL = "bench"
PER_TASK = 1000
IDLE_PROBES, IDLE_PACE = 50, 0.1
LOAD_PACE = 0.25
AT_REST = 20.0
FINAL = {"completed", "failed", "exception", "cancelled", "skipped"}


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def quantile(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def ms(values: list[float]) -> str:
    return f"{quantile(values, 50) * 1000:.0f} / {quantile(values, 99) * 1000:.0f} ms"


def one_partition(name: str, script: str, priority: int = 0) -> dict[str, Any]:
    return {"name": name, "files": ["f"], "containerTag": ["fleet"], "bootstrapper": script, "priority": priority}


def trivial_tasks(prefix: str, count: int, script: str) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{prefix}-{i // PER_TASK}",
            "files": [f"{prefix}/f{j}" for j in range(i, min(i + PER_TASK, count))],
            "containerTag": ["fleet"],
            "bootstrapper": script,
            "partitions": min(PER_TASK, count - i),
        }
        for i in range(0, count, PER_TASK)
    ]


async def counts(scheduler: httpx.AsyncClient, request_id: str) -> dict[str, int]:
    answer = await scheduler.get("/api/v1/partition-counts", params={"requestId": request_id})
    answer.raise_for_status()
    return dict(answer.json())


async def final(scheduler: httpx.AsyncClient, request_id: str, count: int, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while True:
        seen = await counts(scheduler, request_id)
        if sum(seen.values()) == count and not set(seen) - FINAL:
            if set(seen) != {"completed"}:
                raise RuntimeError(f"request {request_id} ended {seen}")
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"request {request_id} not final after {timeout} s: {seen}")
        await asyncio.sleep(0.2)


async def probe_latencies(scheduler: httpx.AsyncClient, request_ids: list[str]) -> list[float]:
    """queued → running of each probe's one partition, as the scheduler recorded them."""
    latencies = []
    for request_id in request_ids:
        await final(scheduler, request_id, 1, timeout=300)
        (partition,) = (await scheduler.get("/api/v1/partitions", params={"requestId": request_id})).json()
        queued = datetime.fromisoformat(partition["queuedAt"])
        started = datetime.fromisoformat(partition["startedAt"])
        latencies.append((started - queued).total_seconds())
    return latencies


async def submit_probes(scheduler: httpx.AsyncClient, script: str, pace: float, until: Any, priority: int) -> list[str]:
    ids = []
    while not until():
        answer = await scheduler.post(
            "/api/v1/task-requests", json={"tasks": [one_partition(f"probe{len(ids)}", script, priority)]}
        )
        answer.raise_for_status()
        ids.append(answer.json()["id"])
        await asyncio.sleep(pace)
    return ids


def control_plane(root: Path, hosts: list[Any], containers: int, db: str, bus: str) -> Stack:
    pool = ContainerType(name="fleet", tags=["fleet"], providers=[POOL], idle_timeout=3600)
    pool = pool.model_copy(update={"max_concurrent": containers, "min_warm": containers})
    config = Config(
        data_dir=root / f"data-{uuid.uuid4().hex[:6]}",
        db=db,
        bus=bus,
        host="0.0.0.0",
        allowed_hosts=[h.gateway for h in hosts],
        ports={n: 0 for n in COMPONENTS},
        container_types=[pool] if containers else [],
        providers=[ProviderConfig(POOL, "pool")],
    )
    return Stack(config)


async def pool_token_file(stack: Stack, root: Path) -> Path:
    _, token = await stack.tokens.create(f"worker of {POOL}", [f"provisioner:worker:{POOL}"])
    path = root / f"pool-{uuid.uuid4().hex[:6]}.token"
    path.write_text(str(token))
    path.chmod(0o600)
    return path


def start_workers(stack: Stack, hosts: list[Any], count: int, capacity: int, token: Path, root: Path) -> list[Any]:
    port = stack.urls["provisioner"].rsplit(":", 1)[1]
    started = []
    for n in range(count):
        host = hosts[n % len(hosts)]
        name = f"w{n}"
        command = [sys.executable, "-m", "infrax.cli", "worker", f"http://{host.gateway}:{port}", "--pool", POOL]
        command += ["--token-file", str(token), "--capacity", str(capacity), "--name", name]
        command += ["--data-dir", str(root / "workers" / name), "--run-as", "self"]
        log = (root / f"{name}.log").open("ab")
        started.append(
            subprocess.Popen(host.command(*command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    return started


def stop_all(processes: list[Any]) -> None:
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def idle_containers(stack: Stack, wanted: int, timeout: float = 300) -> None:
    provisioner = stack.services["provisioner"]
    deadline = time.monotonic() + timeout
    while sum(s.state.value == "idle" for s in provisioner.slots.values()) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the pool never had {wanted} idle containers")
        await asyncio.sleep(0.2)


async def measure_pool(
    console: Console, hosts: list[Any], root: Path, workers: int, capacity: int, partitions: int, db: str, bus: str
) -> dict[str, str]:
    trivial = root / "trivial.sh"
    stack = control_plane(root, hosts, workers * capacity, db, bus)
    await stack.start()
    settle_after_start()
    processes = start_workers(stack, hosts, workers, capacity, await pool_token_file(stack, root), root)
    scheduler = httpx.AsyncClient(
        base_url=stack.urls["scheduler"], headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=120
    )
    try:
        await idle_containers(stack, workers * capacity)
        console.print(f"  {workers} workers joined, {workers * capacity} containers idle")
        sent = 0

        def enough() -> bool:
            nonlocal sent
            sent += 1
            return sent > IDLE_PROBES

        idle = await probe_latencies(scheduler, await submit_probes(scheduler, str(trivial), IDLE_PACE, enough, 0))

        cpu0, t0 = cpu_seconds(), time.monotonic()
        submitted = await scheduler.post(
            "/api/v1/task-requests", json={"tasks": trivial_tasks("load", partitions, str(trivial))}
        )
        submitted.raise_for_status()
        load_id = submitted.json()["id"]
        done = asyncio.Event()
        probes = asyncio.create_task(submit_probes(scheduler, str(trivial), LOAD_PACE, done.is_set, 10))
        await final(scheduler, load_id, partitions)
        elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
        done.set()
        loaded = await probe_latencies(scheduler, await probes)
    finally:
        await scheduler.aclose()
        stop_all(processes)
        await stack.stop()
    return {
        "throughput": f"{partitions / elapsed:.0f} partitions/s ({partitions:,} in {elapsed:.0f} s)",
        "dispatch p50 / p99, idle": f"{ms(idle)} (n={len(idle)})",
        "dispatch p50 / p99, under load": f"{ms(loaded)} (n={len(loaded)})",
        "control-plane CPU per partition": f"{cpu / partitions * 1000:.1f} ms ({cpu / elapsed * 100:.0f} % of a core)",
    }


def beats_heard(text: str) -> float:
    for family in text_string_to_metric_families(text):
        if family.name == "infrax_worker_beats":
            return sum(s.value for s in family.samples if s.name == "infrax_worker_beats_total")
    return 0.0


async def measure_idle_workers(host: Any, root: Path, count: int, db: str, bus: str) -> dict[str, str]:
    stack = control_plane(root, [host], 0, db, bus)
    await stack.start()
    settle_after_start()
    token = await pool_token_file(stack, root)
    provisioner = httpx.AsyncClient(
        base_url=stack.urls["provisioner"], headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=60
    )
    port = stack.urls["provisioner"].rsplit(":", 1)[1]
    command = [sys.executable, __file__, "--simulate", str(count), "--url", f"http://{host.gateway}:{port}"]
    command += ["--token-file", str(token), "--data", str(root / "simulated")]
    log = (root / "simulated.log").open("ab")
    await asyncio.sleep(5)  # the control plane settles after its start
    before = rss_mb()
    joined_in = time.monotonic()
    simulator = subprocess.Popen(host.command(*command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while sum(w["present"] for w in (await provisioner.get("/api/v1/workers")).json()) < count:
            if simulator.poll() is not None or time.monotonic() - joined_in > 300:
                raise RuntimeError(f"the simulated workers did not all join (see {root / 'simulated.log'})")
            await asyncio.sleep(0.5)
        joined_in = time.monotonic() - joined_in
        await asyncio.sleep(5)
        beats0 = beats_heard((await provisioner.get("/metrics")).text)
        cpu0, t0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(AT_REST)
        cpu, elapsed = cpu_seconds() - cpu0, time.monotonic() - t0
        beats = beats_heard((await provisioner.get("/metrics")).text) - beats0
        with_them = rss_mb()
    finally:
        await provisioner.aclose()
        stop_all([simulator])
        await stack.stop()
    per_worker = (with_them - before) / count * 1000
    return {
        f"{count:,} idle workers: all joined in": f"{joined_in:.1f} s",
        "control-plane memory, none / with them": f"{before:.0f} / {with_them:.0f} MB (+{per_worker:.0f} kB a worker)",
        "control-plane CPU at rest with them": f"{cpu / elapsed * 100:.1f} % of a core",
        "beats heard": f"{beats / elapsed:.0f} per second",
    }


async def simulate(count: int, url: str, token_file: Path, data: Path) -> None:
    """`count` workers of the real code in this one process, sharing a provider nobody asks."""
    from infrax.fleet.worker import Worker
    from infrax.provisioner.providers.process import ProcessProvider

    token = token_file.read_text().strip()
    provider = ProcessProvider("simulated", None, {"root": str(data), "run_as": "self"})
    workers = [Worker(url, POOL, token, f"idle{n}", 1, provider) for n in range(count)]
    # All at once, as after a control plane's restart (each retries with its own backoff).
    await asyncio.gather(*(worker.run() for worker in workers))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=5)
    parser.add_argument("--workers", type=int, action="append")
    parser.add_argument("--capacity", type=int, default=2)
    parser.add_argument("--partitions", type=int, default=10_000)
    parser.add_argument("--idle-workers", type=int, default=1000)
    parser.add_argument("--backend", choices=["embedded", "production"], default="embedded")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--simulate", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--token-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    open_files_as_allowed()  # a thousand workers are a thousand sockets, on either side
    logging.basicConfig(level=logging.ERROR)  # workers coming and going are the bench's own doing
    if args.simulate:
        await simulate(args.simulate, args.url, args.token_file, args.data)
        return 0
    if os.geteuid() != 0 or not shutil.which("ip"):
        print("bench-fleet: network namespaces need root and iproute2 (`ip`)", file=sys.stderr)
        return 2
    from tests.fleet.hosts import hosts

    console = Console(width=max(Console().width, 110))
    root = passable_temp_dir("infrax-fleet-")
    trivial = root / "trivial.sh"
    trivial.write_text("#!/bin/sh\nexit 0\n")
    trivial.chmod(0o755)
    rows: dict[str, dict[str, str]] = {}
    async with backend(args) as (db, bus):
        with hosts(args.hosts) as made:
            for workers in args.workers or [5, 50]:
                console.print(f"[bold]{workers} workers over {len(made)} hosts[/bold]")
                rows[f"{workers} workers"] = await measure_pool(
                    console, made, root, workers, args.capacity, args.partitions, db, bus
                )
            if args.idle_workers:
                console.print(f"[bold]{args.idle_workers:,} idle workers[/bold]")
                rows["idle"] = await measure_idle_workers(made[0], root, args.idle_workers, db, bus)
    shutil.rmtree(root, ignore_errors=True)
    backends = f"{(db or 'sqlite').split(':')[0]}, {bus.split(':')[0]}"
    table = Table(
        title=f"infrax bench-fleet: {args.partitions:,} trivial partitions, workers of {args.capacity} containers"
        f" over {args.hosts} hosts ({backends})",
        title_justify="left",
    )
    columns = [c for c in rows if c != "idle"]
    table.add_column("measure")
    for column in columns:
        table.add_column(column, justify="right")
    for measure in rows[columns[0]] if columns else []:
        table.add_row(measure, *(rows[c][measure] for c in columns))
    console.print(table)
    if "idle" in rows:
        idle = Table(title="the cost of idle workers", title_justify="left")
        idle.add_column("measure")
        idle.add_column("value", justify="right")
        for measure, value in rows["idle"].items():
            idle.add_row(measure, value)
        console.print(idle)
    return 0


@contextlib.asynccontextmanager
async def backend(args: argparse.Namespace) -> Any:
    if args.backend == "embedded":
        yield "", "memory://"
        return
    async with throwaway_backends(args.postgres, args.amqp, "infrax_fleet") as backends:
        yield backends


if __name__ == "__main__":
    sys.exit(run_event_loop(main()))
