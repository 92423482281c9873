"""`make bench-dashboard`: how fast the push list renders in a real browser with 1,000 jobs of 20
partitions each stored (#15's target: under 1 s). Figures only.

    .venv/bin/python benchmarks/dashboard.py [--jobs 1000] [--partitions 20]

The jobs are written straight into the store (SQLite, the embedded default), as the job master and
the scheduler keep them: 2 tasks of 10 partitions each, states mixed. Then Debian's chromium
(Playwright) opens the push list: the default page (50 newest jobs) and all 1,000 on one page
(`?limit=1000`), five times each; printed are the median and the worst of the time from asking
for the page to every row drawn (the `load` event: HTML, styles and script in), and the page's size.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from playwright.async_api import async_playwright
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert

from infrax.collector import settle_after_start
from infrax.config import COMPONENTS, Config
from infrax.model import TaskDefinition, new_id, utcnow
from infrax.private import passable_temp_dir
from infrax.stack import Stack
from infrax.store.tables import jobs, partitions, requests, tasks

STATES = ("completed",) * 17 + ("failed", "running", "queued")
RUNS = 5


async def seed(stack: Stack, job_count: int, per_job: int) -> None:
    assert stack.db is not None
    now = utcnow()
    per_task = per_job // 2
    definition = TaskDefinition(
        name="unit", files=["a.py"], container_tag=["linux_x86_64"], bootstrapper="run.sh"
    ).wire()
    async with stack.db.begin() as conn:
        for start in range(0, job_count, 100):
            job_rows, request_rows, task_rows, part_rows = [], [], [], []
            for n in range(start, min(job_count, start + 100)):
                job_id, request_id = new_id(), new_id()
                created = now - timedelta(seconds=job_count - n)
                failed = n % 7 == 0
                job_rows.append(
                    {
                        "id": job_id,
                        "project": "bench",
                        "revision": f"{n:040x}",
                        "repository": "/bench",
                        "source": "cli",
                        "state": "failed" if failed else "completed",
                        "request_id": request_id,
                        "details": {"author": f"dev{n % 13}@bench.invalid", "branch": "main"},
                        "created_at": created,
                        "updated_at": created,
                    }
                )
                request_rows.append(
                    {
                        "id": request_id,
                        "job_id": job_id,
                        "project": "bench",
                        "revision": f"{n:040x}",
                        "state": "failed" if failed else "completed",
                        "created_at": created,
                        "updated_at": created,
                    }
                )
                for position, name in enumerate(("unit", "integration")):
                    task_id = new_id()
                    task_rows.append(
                        {
                            "id": task_id,
                            "request_id": request_id,
                            "job_id": job_id,
                            "position": position,
                            "name": name,
                            "definition": {**definition, "name": name},
                            "state": "completed",
                        }
                    )
                    for index in range(1, per_task + 1):
                        part_rows.append(
                            {
                                "id": new_id(),
                                "seq": n * 1000 + position * 100 + index,
                                "task_id": task_id,
                                "request_id": request_id,
                                "job_id": job_id,
                                "idx": index,
                                "count": per_task,
                                "files": [f"tests/test_{index}.py"],
                                "container_type": "linux_x86_64",
                                "state": STATES[(n + index) % len(STATES)] if failed else "completed",
                                "run": 0,
                                "priority": 0,
                                "queued_at": created,
                            }
                        )
            await conn.execute(insert(jobs), job_rows)
            await conn.execute(insert(requests), request_rows)
            await conn.execute(insert(tasks), task_rows)
            await conn.execute(insert(partitions), part_rows)


async def main(job_count: int, per_job: int) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        raise SystemExit("chromium is missing: scripts/setup-browser.sh installs it")
    root = passable_temp_dir("infrax-bench-dashboard-")  # the containers' task users reach their folders below it
    stack = Stack(Config(data_dir=root / "data", ports={n: 0 for n in COMPONENTS}))
    await stack.start()
    settle_after_start()  # as `infrax up` does
    figures: list[tuple[str, str]] = []
    try:
        t0 = time.perf_counter()
        await seed(stack, job_count, per_job)
        figures.append(("stored", f"{job_count:,} jobs of {per_job} partitions in {time.perf_counter() - t0:.1f} s"))
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            context = await browser.new_context(base_url=stack.urls["web"])
            assert stack.admin_token is not None
            await context.add_cookies([{"name": "infrax_token", "value": stack.admin_token, "url": stack.urls["web"]}])
            page = await context.new_page()
            for label, path, rows in (
                ("default page", "/", 50),
                (f"all {job_count:,} on one page", f"/?limit={job_count}", job_count),
            ):
                timings, size = [], 0
                for _ in range(RUNS + 1):  # the first warms the caches and is not counted
                    start = time.perf_counter()
                    answer = await page.goto(path, wait_until="load")
                    assert answer is not None and answer.ok
                    count = await page.locator("#pushes .pushes .push").count()
                    timings.append((time.perf_counter() - start) * 1000)
                    size = len(await answer.body())
                assert count == min(rows, job_count), count
                chunks = await page.locator("a.chunk").count()
                timings = timings[1:]
                figures.append(
                    (
                        f"push list, {label} ({count:,} rows, {chunks:,} chunks, {size / 1e6:.2f} MB)",
                        f"median {statistics.median(timings):.0f} ms, worst {max(timings):.0f} ms of {RUNS}",
                    )
                )
            await browser.close()
    finally:
        await stack.stop()
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title="infrax bench-dashboard (SQLite, Debian chromium)", title_justify="left")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for measure, value in figures:
        table.add_row(measure, value)
    Console(width=160).print(table)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=20)
    arguments = parser.parse_args()
    asyncio.run(main(arguments.jobs, arguments.partitions))
