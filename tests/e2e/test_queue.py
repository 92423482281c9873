"""A queue anyone can read: each queued partition's place and expected start in the REST API, the
CLI and the dashboard; the queue by container type and project (`GET /api/v1/queue`, `infrax
queue`, `/queue`); `/metrics` with the oldest wait and the waits by type and project; and expected
starts that come true on a steady queue."""

from __future__ import annotations

import statistics
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import yaml

from infrax.model import ContainerType, TaskPartition
from tests.e2e.conftest import Running, script, task
from tests.e2e.test_operator_view import samples, value
from tests.e2e.test_test_results import cli
from tests.jobmaster.conftest import wait_for

ONE = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=1, idle_timeout=60)]
FOUR = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=4, idle_timeout=60)]


def cli_config(infrax: Running, tmp_path: Path) -> Path:
    config = tmp_path / "cli.yml"
    ports = {name: int(url.rsplit(":", 1)[1]) for name, url in infrax.stack.urls.items()}
    config.write_text(yaml.safe_dump({"data_dir": str(infrax.stack.config.data_dir), "ports": ports}))
    return config


async def queued(infrax: Running, request_id: str) -> list[TaskPartition]:
    return [p for t in (await infrax.request(request_id)).tasks for p in t.partitions if p.state == "queued"]


async def test_every_queued_partition_says_where_it_stands_and_the_queue_is_readable_by_project(
    start_stack: Any, tmp_path: Path
) -> None:
    infrax = await start_stack(container_types=ONE, projects={"big": {"weight": 2}})
    gate = tmp_path / "go"
    waits = script(tmp_path, "waits.sh", f"while [ ! -f {gate} ]; do sleep 0.05; done\n")
    files = [f"f{i}.py" for i in range(4)]
    big = await infrax.submit([task("big", waits, files, partitions=4)], project="big")

    async def one_running() -> bool:
        return len(await queued(infrax, big["id"])) == 3

    await wait_for(one_running, 30, "big's first partition on the one container, three behind it")
    small = await infrax.submit([task("small", waits, files[:2], partitions=2)], project="small")

    async def small_queued() -> list[TaskPartition]:
        return await queued(infrax, small["id"])

    first, second = sorted(await wait_for(small_queued, 30, "small's partitions queued"), key=lambda p: p.index)
    # Big (weight 2) has two of the next three starts, small one: small's first goes next.
    assert (first.queue_position, second.queue_position) == (0, 3)
    assert first.expected_start is not None and second.expected_start is not None and first.expected_end is not None
    assert first.expected_start < first.expected_end <= second.expected_start
    one = (await infrax["scheduler"].get(f"/api/v1/partitions/{second.id}")).json()
    assert one["queuePosition"] == 3  # and the same expectation, computed again a moment later
    assert abs((datetime.fromisoformat(one["expectedStart"]) - second.expected_start).total_seconds()) < 1

    summary = (await infrax["scheduler"].get("/api/v1/queue")).json()["containerTypes"]
    assert [(t["containerType"], t["capacity"], t["running"], t["queued"]) for t in summary] == [
        ("linux_x86_64", 1, 1, 5)
    ]
    assert summary[0]["oldestWaitSeconds"] > 0
    assert [(p["project"], p["weight"], p["running"], p["queued"], p["share"]) for p in summary[0]["projects"]] == [
        ("big", 2.0, 1, 3, 1.0),
        ("small", 1.0, 0, 2, 0.0),
    ]
    found = samples((await infrax["scheduler"].get("/metrics")).text)
    assert value(found, "infrax_scheduler_queued_by_project", container_type="linux_x86_64", project="small") == 2
    assert value(found, "infrax_scheduler_oldest_queued_seconds", container_type="linux_x86_64", project="big") > 0

    config = cli_config(infrax, tmp_path)
    code, shown, errors = await cli("queue", "--config", str(config))
    assert code == 0, errors
    assert "linux_x86_64: 1 running of 1, 5 queued" in shown and "big" in shown and "small" in shown
    async with httpx.AsyncClient(cookies={"infrax_token": infrax.stack.admin_token or ""}) as browser:
        page = await browser.get(f"{infrax.stack.urls['web']}/queue")
    assert page.status_code == 200
    assert '<tr data-project="small"><td>small</td><td>1.0</td><td>0</td><td>0 %</td><td>2</td></tr>' in page.text

    gate.touch()
    await infrax.wait_request(small["id"])
    await infrax.wait_request(big["id"])
    found = samples((await infrax["scheduler"].get("/metrics")).text)
    for project, runs in (("big", 4), ("small", 2)):
        labels = {"container_type": "linux_x86_64", "project": project}
        assert value(found, "infrax_scheduler_queue_wait_seconds_count", **labels) == runs
        assert value(found, "infrax_scheduler_queue_wait_recent_seconds", **labels, quantile="0.99") > 0


async def test_on_a_steady_queue_expected_starts_come_true_within_a_fifth(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(container_types=FOUR)
    sleeps = script(tmp_path, "sleeps.sh", "sleep 0.2\n")
    files = [f"f{i:03}.py" for i in range(300)]
    submitted = await infrax.submit([task("steady", sleeps, files, partitions=300)], project="steady")

    async def steady() -> bool:  # a hundred done: the type's overhead learned from its own runs
        done = [p for t in (await infrax.request(submitted["id"])).tasks for p in t.partitions if p.finished_at]
        return len(done) >= 60

    await wait_for(steady, 120, "the queue steady, sixty partitions done")
    asked = datetime.now().astimezone()
    # Those claimed at that moment are on their way to a container: no longer in the queue.
    expected = {p.id: p.expected_start for p in await queued(infrax, submitted["id"]) if p.expected_start}
    assert len(expected) >= 200, len(expected)
    done = await infrax.wait_request(submitted["id"], timeout=180)

    errors = []
    for part in (p for t in done.tasks for p in t.partitions if p.id in expected):
        assert part.started_at is not None
        actual = (part.started_at - asked).total_seconds()
        predicted = (expected[part.id] - asked).total_seconds()
        errors.append(abs(predicted - actual) / actual)
    assert statistics.median(errors) <= 0.2, sorted(errors)[len(errors) // 2 - 5 : len(errors) // 2 + 5]
