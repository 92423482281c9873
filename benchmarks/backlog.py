"""`make bench-backlog`: what a big backlog costs. Figures only; the targets are in #18's text.

    .venv/bin/python benchmarks/backlog.py [--partitions 1000000] [--backend embedded] [--backend production]

One stack in this process (all components, served on loopback), two container types: `busy`, two
containers held by partitions that sleep for the whole run, and `fast`, warm containers for
trivial partitions. The backlog is queued behind `busy`, in requests of the largest allowed size
(10 tasks of 1,000 partitions), from a process of its own; the health of every component is asked
every 50 ms from another, as an outside checker would. Printed: peak memory (this process holds
every component; the agents are its children), health p99 by phase (idle, a trivial run on an
empty queue, intake, the backlog at rest, a trivial run with it behind), the time to list one page
of queued partitions, to count partitions by state and to cancel one 1,000-partition request, and
the trivial-partition throughput on `fast` before the backlog and with it behind (same run).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import queue
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table

from infrax.bench import throwaway_backends
from infrax.cli import run_event_loop
from infrax.collector import settle_after_start
from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import MAX_PARTITIONS_PER_REQUEST, ContainerType
from infrax.private import passable_temp_dir
from infrax.stack import Stack

PER_TASK = 1000
FAST = 16
TRIVIAL_PARTITIONS = 2000
IDLE_SECONDS = 3.0
SAMPLES = 5  # of each timed query
RUNS = 3  # trivial runs on each side: one of 2,000 partitions on two cores varies by a tenth


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]


def probe_health(urls: dict[str, str], stop: Any, results: Any) -> None:
    """In a process of its own, as a real health checker is: every component's health every 50 ms.
    Each answer's wall-clock time, component and latency go back when `stop` is set."""
    samples: list[tuple[float, str, float]] = []
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            for name, url in urls.items():
                t0 = time.perf_counter()
                try:
                    client.get(f"{url}/api/v1/health")
                    latency = (time.perf_counter() - t0) * 1000
                except httpx.HTTPError:
                    latency = 30_000.0
                samples.append((time.time(), name, latency))
            stop.wait(0.05)
    results.put(samples)


def submit_backlog(url: str, token: str, partitions: int, sleeper: str) -> None:
    """In a process of its own, so building and encoding the requests is not the stack's work:
    the backlog in requests of the largest allowed size, one after another."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
        for start in range(0, partitions, MAX_PARTITIONS_PER_REQUEST):
            body = {"tasks": tasks(f"b{start}", min(MAX_PARTITIONS_PER_REQUEST, partitions - start), "busy", sleeper)}
            client.post("/api/v1/task-requests", json=body).raise_for_status()


class AutovacuumWatch:
    """On PostgreSQL: whether its autovacuum workers were busy with this database, twice a second.
    After a million inserts they are, for minutes, on the same two cores as everything else."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, str, float]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.url)

        async def watch() -> None:
            try:
                while True:
                    busy = await connection.fetchval(
                        "SELECT count(*) FROM pg_stat_activity"
                        " WHERE backend_type = 'autovacuum worker' AND datname = current_database()"
                    )
                    self.samples.append((time.time(), "autovacuum", 100.0 if busy else 0.0))
                    await asyncio.sleep(0.5)
            finally:
                await connection.close()

        self._task = asyncio.create_task(watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


class Phases:
    """Wall-clock boundaries of the run's phases, to file the probe's samples by."""

    def __init__(self) -> None:
        self.starts: list[tuple[float, str]] = []

    def enter(self, name: str) -> None:
        self.starts.append((time.time(), name))

    def latencies(self, samples: list[tuple[float, str, float]]) -> dict[str, list[float]]:
        by_phase: dict[str, list[float]] = {}
        for at, _component, latency in samples:
            current = None
            for start, name in self.starts:
                if start <= at:
                    current = name
            if current is not None:
                by_phase.setdefault(current, []).append(latency)
        return by_phase


async def wait_final(scheduler: httpx.AsyncClient, request_id: str, count: int, timeout: float) -> None:
    """Polled by the counts of its partitions (an aggregate), not by reading the whole request."""
    deadline = time.monotonic() + timeout
    final = {"completed", "failed", "exception", "cancelled", "skipped"}
    while True:
        counts = (await scheduler.get("/api/v1/partition-counts", params={"requestId": request_id})).json()
        if sum(counts.values()) == count and not set(counts) - final:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"request {request_id} not final after {timeout} s")
        await asyncio.sleep(0.1)


async def wait_planned(scheduler: httpx.AsyncClient) -> None:
    """Until no request waits to be planned (one row of the small requests table, not a count)."""
    while (await scheduler.get("/api/v1/task-requests", params={"state": "pending", "limit": 1})).json():
        await asyncio.sleep(0.2)


def tasks(prefix: str, count: int, tag: str, bootstrapper: str, priority: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{prefix}-{i // PER_TASK}",
            "files": [f"{prefix}/f{j}" for j in range(i, min(i + PER_TASK, count))],
            "containerTag": [tag],
            "bootstrapper": bootstrapper,
            "partitions": min(PER_TASK, count - i),
            "priority": priority,
        }
        for i in range(0, count, PER_TASK)
    ]


async def throughput(scheduler: httpx.AsyncClient, trivial: str) -> float:
    t0 = time.monotonic()
    response = await scheduler.post(
        "/api/v1/task-requests", json={"tasks": tasks(f"t{uuid.uuid4().hex[:6]}", TRIVIAL_PARTITIONS, "fast", trivial)}
    )
    response.raise_for_status()
    await wait_final(scheduler, response.json()["id"], TRIVIAL_PARTITIONS, timeout=600)
    return TRIVIAL_PARTITIONS / (time.monotonic() - t0)


def descendants_peak_mb() -> tuple[int, float]:
    """How many processes this one started are alive (the agents of the process containers), and
    the highest peak RSS among them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, peak, todo = 0, 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                found += 1
                peak = max(peak, int(line.split()[1]) / 1024)
    return found, peak


async def run(console: Console, partitions: int, db: str = "", bus: str = "memory://") -> None:
    root = passable_temp_dir("infrax-backlog-")  # the containers' task users reach their folders below it
    trivial, sleeper = root / "trivial.sh", root / "sleeper.sh"
    trivial.write_text("#!/bin/sh\nexit 0\n")
    sleeper.write_text("#!/bin/sh\nsleep 3600\n")
    for script in (trivial, sleeper):
        script.chmod(0o755)
    config = Config(
        data_dir=root / "data",
        db=db,
        bus=bus,
        ports={n: 0 for n in COMPONENTS},
        container_types=[
            ContainerType(name="busy", tags=["busy"], max_concurrent=2, min_warm=2, idle_timeout=3600),
            ContainerType(name="fast", tags=["fast"], max_concurrent=FAST, min_warm=FAST, idle_timeout=3600),
        ],
        providers=[ProviderConfig("process")],
    )
    stack = Stack(config)
    await stack.start()
    settle_after_start()  # as `infrax up` does
    spawn = multiprocessing.get_context("spawn")
    stop_probe, probe_results = spawn.Event(), spawn.Queue()
    probe = spawn.Process(target=probe_health, args=(stack.urls, stop_probe, probe_results), daemon=True)
    phases = Phases()
    autovacuum = AutovacuumWatch(db) if db else None
    if autovacuum is not None:
        await autovacuum.start()
    scheduler = httpx.AsyncClient(
        base_url=stack.urls["scheduler"], headers={"Authorization": f"Bearer {stack.admin_token}"}, timeout=60
    )
    try:
        held = await scheduler.post("/api/v1/task-requests", json={"tasks": tasks("held", 2, "busy", str(sleeper))})
        held.raise_for_status()
        probe.start()
        await asyncio.sleep(2)  # the two sleepers take both busy containers; the pool warms
        phases.enter("idle")
        await asyncio.sleep(IDLE_SECONDS)
        phases.enter("trivial run, empty queue")
        empty_throughput = [await throughput(scheduler, str(trivial)) for _ in range(RUNS)]
        phases.enter("idle, after it")
        await asyncio.sleep(IDLE_SECONDS)
        idle_rss, idle_peak = rss_mb(), peak_mb()

        phases.enter("intake")
        t0 = time.monotonic()
        submitter = spawn.Process(
            target=submit_backlog, args=(stack.urls["scheduler"], stack.admin_token, partitions, str(sleeper))
        )
        submitter.start()
        await asyncio.to_thread(submitter.join)
        if submitter.exitcode != 0:
            raise RuntimeError(f"the submitting process failed (exit code {submitter.exitcode})")
        await wait_planned(scheduler)
        intake_seconds = time.monotonic() - t0
        # Every queued partition's news still goes out to its consumers; measured apart from the rest.
        phases.enter("announcing")
        t1 = time.monotonic()
        await stack.services["scheduler"].published()
        announce_seconds = time.monotonic() - t1
        # And every consumer has had its news (a million "queued", each checked and handled): the
        # backlog's cost is measured at rest, not that of the announcement still being read.
        phases.enter("consumers catching up")
        t1 = time.monotonic()
        assert stack.bus is not None
        while await stack.bus.waiting():
            await asyncio.sleep(0.5)
        catch_up_seconds = time.monotonic() - t1
        phases.enter("at rest, backlog queued")
        await asyncio.sleep(IDLE_SECONDS)

        phases.enter("list, count, cancel")
        timings: dict[str, list[float]] = {}

        def timed(name: str, since: float) -> None:
            timings.setdefault(name, []).append((time.perf_counter() - since) * 1000)

        url = "/api/v1/partitions?state=queued&limit=100"
        for _ in range(SAMPLES):  # five pages one after another, as a client reads them
            t = time.perf_counter()
            page = await scheduler.get(url)
            timed("list one page (100 queued partitions)", t)
            assert len(page.json()) == 100 and "next" in page.links
            url = str(page.links["next"]["url"])
        for _ in range(SAMPLES):
            t = time.perf_counter()
            counts = (await scheduler.get("/api/v1/partition-counts")).json()
            timed("count partitions by state", t)
        # Twice: as soon as it is planned, its thousand "queued" still on their way to the consumers
        # of this same process (what a user who cancels a mistaken push sees), and at rest.
        for n in range(2 * SAMPLES):
            at_rest = n % 2 == 1
            doomed = await scheduler.post(
                "/api/v1/task-requests", json={"tasks": tasks(f"doomed{n}", 1000, "busy", str(sleeper))}
            )
            await wait_planned(scheduler)
            if at_rest:
                await stack.services["scheduler"].published()
                while await stack.bus.waiting():
                    await asyncio.sleep(0.1)
            t = time.perf_counter()
            (await scheduler.post(f"/api/v1/task-requests/{doomed.json()['id']}/cancel")).raise_for_status()
            when = "its announcement delivered" if at_rest else "just planned"
            timed(f"cancel one 1,000-partition request, {when}", t)
        phases.enter("trivial run, backlog behind")
        backlog_throughput = [await throughput(scheduler, str(trivial)) for _ in range(RUNS)]
        phases.enter("end")
        agents, agent_peak = descendants_peak_mb()
    finally:
        stop_probe.set()
        if autovacuum is not None:
            await autovacuum.stop()
        try:
            # Not on the event loop: the probe's last questions need the stack's answers meanwhile.
            samples = await asyncio.to_thread(probe_results.get, timeout=60) if probe.is_alive() else []
        except queue.Empty:  # the probe is stuck: the figures go without health, the error (if any) up
            samples = []
        probe.join(timeout=10)
        await scheduler.aclose()
        await stack.stop()

    backends = f"{db.split(':')[0] or 'sqlite'}, {bus.split(':')[0]}"
    table = Table(title=f"infrax bench-backlog: {partitions:,} queued partitions ({backends})", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("queued (counted)", f"{counts.get('queued', 0):,}")
    table.add_row(
        "intake (submitted and planned)", f"{intake_seconds:.0f} s, {partitions / intake_seconds:,.0f} partitions/s"
    )
    table.add_row("announcing the backlog on the bus, after intake", f"{announce_seconds:.0f} s")
    table.add_row("consumers caught up with the announcement, after it", f"{catch_up_seconds:.0f} s")
    table.add_row("memory of infrax up, idle: now / peak", f"{idle_rss:.0f} / {idle_peak:.0f} MB")
    table.add_row("memory of infrax up, with the backlog: now / peak", f"{rss_mb():.0f} / {peak_mb():.0f} MB")
    table.add_row(
        f"memory of the {agents} processes it started (agents, planner): highest peak", f"{agent_peak:.0f} MB"
    )
    by_phase = phases.latencies(samples)
    for _, name in phases.starts:
        if by_phase.get(name) and name != "end":
            values = by_phase[name]
            table.add_row(
                f"health p99 / max, {name} ({len(values)} answers)", f"{p99(values):.1f} / {max(values):.1f} ms"
            )
    if autovacuum is not None:
        busy = phases.latencies(autovacuum.samples)
        shares = [f"{name} {statistics.mean(busy[name]):.0f} %" for _, name in phases.starts if busy.get(name)]
        table.add_row("PostgreSQL autovacuum busy with this database, share of", ", ".join(shares))
    for name, values in timings.items():
        table.add_row(
            f"{name}, median / max of {len(values)}", f"{statistics.median(values):.1f} / {max(values):.1f} ms"
        )
    for name, runs in (("empty queue", empty_throughput), ("backlog behind", backlog_throughput)):
        shown = ", ".join(f"{r:.0f}" for r in runs)
        table.add_row(f"trivial throughput, {name}: median ({shown})", f"{statistics.median(runs):.0f} partitions/s")
    console.print(table)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, default=1_000_000)
    parser.add_argument("--backend", action="append", choices=["embedded", "production"])
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--amqp", default="amqp://guest:guest@127.0.0.1:5672/")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 110))
    for backend in args.backend or ["embedded"]:
        if backend == "embedded":
            await run(console, args.partitions)
            continue
        async with throwaway_backends(args.postgres, args.amqp, "infrax_backlog") as (db, bus):
            await run(console, args.partitions, db=db, bus=bus)


if __name__ == "__main__":
    run_event_loop(main())  # uvloop, as `infrax up` runs
