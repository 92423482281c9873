"""A partition's overhead besides its files (checkout, the runner's start) is learned and planned with."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from infrax.bus import topics
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import PartitionStatus
from infrax.model import ContainerType, PlanRequest, State, TaskDefinition, TaskPartition, utcnow
from infrax.optimizer.history import FileHistory, RuntimeHistory, Sample, spread
from infrax.optimizer.overheads import Overhead
from infrax.optimizer.planner import Planner
from infrax.optimizer.service import OptimizerService
from infrax.store import Database

LINUX = ContainerType(name="linux", tags=["linux"], max_concurrent=8, overhead=1.0)


def run(
    run_id: str,
    files: list[str],
    duration: float,
    checkout: float | None,
    reported: dict[str, float] | None = None,
) -> Sample:
    return Sample("p", "unit", "linux", run_id, files, 1, 1, duration, reported, checkout)


def test_the_files_share_a_run_without_its_checkout() -> None:
    assert spread(["a", "b"], 10.0, None, {"a": 1.0, "b": 1.0}, overhead=4.0) == {"a": 3.0, "b": 3.0}
    assert spread(["a"], 3.0, None, {}, overhead=4.0) == {}  # all of it was overhead: nothing to learn


async def test_checkout_and_start_are_learned_once_per_run(db: Database) -> None:
    history = RuntimeHistory(db)
    # Every file reported: the rest of the run, past its checkout, is the runner's start.
    await history.record([run("r1", ["a", "b"], 10.0, 3.0, {"a": 2.0, "b": 1.0})])
    await history.record([run("r2", ["a", "b"], 14.0, 5.0, {"a": 2.0, "b": 1.0})])
    await history.record([run("r2", ["a", "b"], 14.0, 5.0, {"a": 2.0, "b": 1.0})])  # redelivered
    # Not every file reported: the checkout is known, the start is not (the files share the rest).
    await history.record([run("r3", ["a", "b", "c"], 20.0, 6.0, {"a": 2.0, "b": 1.0})])
    (row,) = await history.overhead_rows("p", "unit")
    assert (row.checkout_samples, row.start_samples) == (3, 2)
    assert row.checkout == 4.0 + (6.0 - 4.0) / 3  # the mean of 3 and 5, then 6 at a third's weight
    assert row.start == 5.0  # the mean of 4 and 6
    files = {r.file: r.estimate for r in await history.rows("p", "unit")}
    # r3: 20 s less its 6 s checkout, the learned 5 s start and a's and b's reported 3 s: 6 s for c.
    assert files["c"] == 6.0
    loaded = await history.overheads("p", [("unit", "linux"), ("other", "linux")])
    assert loaded == {("unit", "linux"): Overhead(row.checkout, 3, 5.0, 2)}


def request(target: float) -> PlanRequest:
    task = TaskDefinition(
        name="unit",
        files=[f"t{i}.py" for i in range(20)],
        container_tag=["linux"],
        bootstrapper="run.sh",
        target_wall_time=target,
    )
    return PlanRequest(project="p", tasks=[task], container_types=[LINUX])


def test_a_learned_checkout_counts_toward_the_target_wall_time() -> None:
    history = {("unit", "linux"): {f"t{i}.py": FileHistory(1.0, 3) for i in range(20)}}
    planner = Planner()
    # 20 s of files, a 11 s target, 1 s of container start: two partitions of 10 s.
    (alone,) = planner.plan(request(11.0), history).tasks
    assert (len(alone.partitions), alone.expected_makespan) == (2, 11.0)
    # With a 4 s checkout and a 1 s start learned, 10 s a partition does not fit: 4 of 5 s.
    learned = {("unit", "linux"): Overhead(4.0, 3, 1.0, 3)}
    plan = planner.plan(request(11.0), history, overheads=learned, explain=True)
    (task,) = plan.tasks
    assert (len(task.partitions), task.expected_makespan) == (4, 11.0)
    assert plan.expected_makespan == 11.0  # the dispatch simulation counts it too
    assert any(
        line.startswith("overhead 6.0 s a partition") and "checkout 4.0 s over 3 run(s)" in line
        for line in task.explanation or []
    ), task.explanation


async def test_the_optimizer_learns_checkout_from_the_bus(db: Database, bus: MemoryBus) -> None:
    service = OptimizerService(db, bus)
    await service.start()
    try:
        now = utcnow()
        for n in range(3):
            status = PartitionStatus(
                duration=9.0,
                file_durations={"t0.py": 1.0},
                checkout_seconds=3.0 + n,
                previous_state=State.RUNNING,
                task_name="unit",
                project="p",
                revision="abc",
                partition=TaskPartition(
                    id=f"part{n}",
                    task_id="t1",
                    request_id="req1",
                    job_id="job1",
                    index=1,
                    count=1,
                    files=["t0.py"],
                    container_type="linux",
                    state=State.COMPLETED,
                    run=0,
                    priority=0,
                    started_at=now - timedelta(seconds=9),
                    finished_at=now,
                ),
            )
            key = topics.routing_key("job1", "t1", f"part{n}", 0, "linux", State.COMPLETED)
            await bus.publish(topics.PARTITIONS, key, status.wire())
        async with asyncio.timeout(10):
            while not (rows := await service.overheads("p", "unit")) or rows[0].checkout_samples < 3:
                await asyncio.sleep(0.02)
        assert (rows[0].checkout, rows[0].start) == (4.0, 4.0)  # checkouts 3, 4, 5; starts 5, 4, 3
        plan = await service.plan(request(100.0))
        assert plan.tasks[0].expected_makespan == 1.0 + 8.0 + 1.0 * 20  # container, learned, files
    finally:
        await service.stop()
