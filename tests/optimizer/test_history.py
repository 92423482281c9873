"""Runtime history: the spreading rule, the store, and learning from the bus changes the next plan."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from infrax.bus import topics
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import PartitionStatus
from infrax.model import (
    ContainerType,
    ExecutionPlan,
    PlanRequest,
    State,
    TaskDefinition,
    TaskPartition,
    new_id,
    utcnow,
)
from infrax.optimizer.history import RuntimeHistory, Sample, spread
from infrax.optimizer.service import OptimizerService
from infrax.store import Database
from infrax.store.tables import file_durations

LINUX = ContainerType(name="linux", tags=["linux"], max_concurrent=8)
# The true durations of the files: one slow file among quick ones.
TRUE = {f"tests/test_{i:02d}.py": 2.0 for i in range(12)} | {"tests/test_00.py": 20.0, "tests/test_01.py": 9.0}


def sample(
    files: list[str],
    run_id: str = "p1-0",
    duration: float | None = None,
    reported: dict[str, float] | None = None,
    index: int = 1,
    count: int = 2,
) -> Sample:
    return Sample(
        project="p",
        task_name="unit",
        container_type="linux",
        run_id=run_id,
        files=files,
        index=index,
        count=count,
        duration=duration,
        file_durations=reported,
    )


# -- the spreading rule -------------------------------------------------------------------------


def test_reported_durations_are_taken_as_they_are() -> None:
    assert spread(["a", "b"], 100.0, {"a": 3.0, "b": 4.0, "other": 9.0}, {}) == {"a": 3.0, "b": 4.0}


def test_the_rest_of_the_duration_is_spread_by_the_current_estimates() -> None:
    assert spread(["a", "b", "c"], 10.0, {"a": 4.0}, {"b": 1.0, "c": 2.0}) == {"a": 4.0, "b": 2.0, "c": 4.0}


def test_without_estimates_the_duration_is_spread_equally() -> None:
    assert spread(["a", "b"], 10.0, None, {}) == {"a": 5.0, "b": 5.0}


def test_a_file_without_an_estimate_counts_as_the_median() -> None:
    shares = spread(["a", "b", "c"], 12.0, None, {"a": 2.0, "b": 4.0})  # c counts as 3: 12 s over 2 + 4 + 3
    assert shares == pytest.approx({"a": 8 / 3, "b": 16 / 3, "c": 4.0})


def test_nothing_is_learned_of_unreported_files_when_no_time_is_left() -> None:
    assert spread(["a", "b"], 3.0, {"a": 5.0}, {}) == {"a": 5.0}
    assert spread(["a", "b"], None, None, {}) == {}


# -- the store ------------------------------------------------------------------------------------


async def test_samples_average_then_take_the_median_of_the_recent_and_count_once(db: Database) -> None:
    history = RuntimeHistory(db)
    await history.record([sample(["a"], "r1", reported={"a": 10.0})])
    await history.record([sample(["a"], "r2", reported={"a": 20.0})])
    await history.record([sample(["a"], "r2", reported={"a": 20.0})])  # redelivered: no change
    rows = await history.rows("p", "unit")
    assert [(r.file, r.estimate, r.samples) for r in rows] == [("a", 15.0, 2)]
    for i in range(3, 10):
        await history.record([sample(["a"], f"r{i}", reported={"a": 100.0})])
    (row,) = await history.rows("p", "unit")
    assert (row.samples, row.estimate) == (9, 100.0)  # the recent runs' median
    await history.record([sample(["a"], "r4", reported={"a": 100.0})])  # an older run again: still known
    assert (await history.rows("p", "unit"))[0].samples == 9


async def test_runs_on_a_loaded_machine_do_not_drag_the_estimate(db: Database) -> None:
    """Two of five runs twice as slow (the machine was busy): the estimate stays the file's own time;
    a moving average would have taken 1.6x the time after the first and 2.0x after the second."""
    history = RuntimeHistory(db)
    for n, seconds in enumerate([10.0, 10.5, 9.5, 20.0, 21.0]):
        await history.record([sample(["a"], f"r{n}", reported={"a": seconds})])
    (row,) = await history.rows("p", "unit")
    assert row.estimate == 10.5
    for n in range(5, 8):  # the machine stays slower: the estimate follows, once most recent runs say so
        await history.record([sample(["a"], f"r{n}", reported={"a": 20.0})])
    assert (await history.rows("p", "unit"))[0].estimate == 20.0


async def test_history_is_kept_per_project_task_type_and_file(db: Database) -> None:
    history = RuntimeHistory(db)
    await history.record(
        [
            sample(["a", "b"], "r1", reported={"a": 1.0, "b": 2.0}, index=2, count=3),
            Sample("p", "unit", "mac", "r2", ["a"], 1, 1, None, {"a": 7.0}),
            Sample("q", "unit", "linux", "r3", ["a"], 1, 1, None, {"a": 9.0}),
        ]
    )
    loaded = await history.load("p", [("unit", "linux"), ("unit", "mac"), ("other", "linux")])
    assert {f: (h.estimate, h.last_index, h.last_count) for f, h in loaded[("unit", "linux")].items()} == {
        "a": (1.0, 2, 3),
        "b": (2.0, 2, 3),
    }
    assert loaded[("unit", "mac")]["a"].estimate == 7.0
    assert loaded[("other", "linux")] == {}
    async with db.begin() as conn:
        assert len((await conn.execute(select(file_durations))).all()) == 4


async def test_one_batch_may_hold_many_runs_of_the_same_file(db: Database) -> None:
    history = RuntimeHistory(db)
    await history.record(
        [
            sample(["a"], "r1", reported={"a": 10.0}),
            sample(["a"], "r2", reported={"a": 20.0}),
            sample(["a"], "r1", reported={"a": 10.0}),
        ]
    )
    (row,) = await history.rows("p", "unit")
    assert (row.estimate, row.samples) == (15.0, 2)


# -- learning from the bus --------------------------------------------------------------------------


def plan_request(files: list[str], count: int = 2) -> PlanRequest:
    task = TaskDefinition(name="unit", files=files, container_tag=["linux"], bootstrapper="run.sh", partitions=count)
    return PlanRequest(project="p", tasks=[task], container_types=[LINUX])


def true_makespan(plan: ExecutionPlan, truth: dict[str, float] = TRUE) -> float:
    return max(sum(truth[f] for f in part.files) for part in plan.tasks[0].partitions)


async def finish(
    bus: MemoryBus,
    plan: ExecutionPlan,
    *,
    report_files: bool,
    measured: bool = True,
    request_id: str = "req1",
    truth: dict[str, float] = TRUE,
) -> None:
    """What the scheduler publishes when every partition of the plan completes."""
    now = utcnow()
    for part in plan.tasks[0].partitions:
        partition_id = f"{request_id}p{part.index}"
        seconds = sum(truth[f] for f in part.files)
        status = PartitionStatus(
            duration=seconds if measured else None,
            file_durations={f: truth[f] for f in part.files} if report_files and measured else None,
            previous_state=State.RUNNING,
            task_name="unit",
            project="p",
            revision=None,
            partition=TaskPartition(
                id=partition_id,
                task_id="t1",
                request_id=request_id,
                job_id=None,
                index=part.index,
                count=len(plan.tasks[0].partitions),
                files=part.files,
                container_type="linux",
                state=State.COMPLETED,
                run=0,
                priority=0,
                started_at=now - timedelta(seconds=seconds),
                finished_at=now,
            ),
        )
        key = topics.routing_key(None, "t1", partition_id, 0, "linux", State.COMPLETED)
        await bus.publish(topics.PARTITIONS, key, status.wire())


async def everything_before_learned(bus: MemoryBus, service: OptimizerService) -> None:
    """A completed partition of a project of its own, published last, then learned: the optimizer
    learns in the order the bus delivers, so whatever was published before it has been handled."""
    marker = new_id()
    status = PartitionStatus(
        duration=1.0,
        file_durations={"marker.py": 1.0},
        previous_state=State.RUNNING,
        task_name="unit",
        project=marker,
        revision=None,
        partition=TaskPartition(
            id=marker,
            task_id="t-marker",
            request_id="r-marker",
            job_id=None,
            index=1,
            count=1,
            files=["marker.py"],
            container_type="linux",
            state=State.COMPLETED,
            run=0,
            priority=0,
            started_at=utcnow() - timedelta(seconds=1),
            finished_at=utcnow(),
        ),
    )
    await bus.publish(
        topics.PARTITIONS, topics.routing_key(None, "t-marker", marker, 0, "linux", State.COMPLETED), status.wire()
    )
    async with asyncio.timeout(10):
        while not await service.file_history(marker, "unit"):
            await asyncio.sleep(0.02)


async def learned(service: OptimizerService, files: int, samples: int = 1) -> None:
    for _ in range(200):
        rows = await service.file_history("p", "unit")
        if len(rows) >= files and all(r.samples >= samples for r in rows):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"history not learned: {rows}")


async def test_history_learned_from_the_bus_makes_the_next_plan_even(db: Database, bus: MemoryBus) -> None:
    service = OptimizerService(db, bus)
    await service.start()
    try:
        files = sorted(TRUE)
        first = await service.plan(plan_request(files))
        # No history: equal counts in file order, and the slow files land together.
        assert [len(p.files) for p in first.tasks[0].partitions] == [6, 6]
        await finish(bus, first, report_files=True)
        await learned(service, len(files))
        rows = {r.file: r for r in await service.file_history("p", "unit")}
        assert {f: r.estimate for f, r in rows.items()} == TRUE
        second = await service.plan(plan_request(files))
        assert true_makespan(first) == 37.0  # 20 + 9 + 4 x 2 s against 6 x 2 s
        assert true_makespan(second) == 25.0  # the best possible: 9 + 8 x 2 s against 20 + 2 x 2 s
        # Learned where each file ran: the next plan with the same history is the same, numbers included.
        assert (await service.plan(plan_request(files))).tasks[0].partitions == second.tasks[0].partitions
        # At-least-once delivery: the same messages again change nothing.
        await finish(bus, first, report_files=True)
        await everything_before_learned(bus, service)
        assert all(r.samples == 1 for r in await service.file_history("p", "unit"))
    finally:
        await service.stop()


async def test_without_per_file_durations_the_partition_time_is_spread(db: Database, bus: MemoryBus) -> None:
    service = OptimizerService(db, bus)
    await service.start()
    try:
        files = sorted(TRUE)
        first = await service.plan(plan_request(files))
        await finish(bus, first, report_files=False)
        await learned(service, len(files))
        estimates = {r.file: r.estimate for r in await service.file_history("p", "unit")}
        for part in first.tasks[0].partitions:
            total = sum(TRUE[f] for f in part.files)
            assert all(estimates[f] == pytest.approx(total / len(part.files)) for f in part.files)
    finally:
        await service.stop()


async def test_partition_times_alone_even_out_slow_and_quick_groups(db: Database, bus: MemoryBus) -> None:
    # Without per-file durations only the partitions' totals are known: enough when whole groups of
    # files differ (here the first half is slow), not to tell apart files that ran together.
    slow_first = {f"tests/test_{i:02d}.py": 5.0 if i < 6 else 1.0 for i in range(12)}
    service = OptimizerService(db, bus)
    await service.start()
    try:
        first = await service.plan(plan_request(sorted(slow_first)))
        await finish(bus, first, report_files=False, truth=slow_first)
        await learned(service, len(slow_first))
        second = await service.plan(plan_request(sorted(slow_first)))
        assert true_makespan(first, slow_first) == 30.0 and true_makespan(second, slow_first) == 18.0
    finally:
        await service.stop()


async def test_without_a_measured_duration_the_partition_times_give_it(db: Database, bus: MemoryBus) -> None:
    service = OptimizerService(db, bus)
    await service.start()
    try:
        plan = await service.plan(plan_request(["tests/test_00.py", "tests/test_02.py"], count=1))
        await finish(bus, plan, report_files=False, measured=False)
        await learned(service, 2)
        estimates = {r.file: r.estimate for r in await service.file_history("p", "unit")}
        assert estimates == pytest.approx({"tests/test_00.py": 11.0, "tests/test_02.py": 11.0}, rel=1e-3)
    finally:
        await service.stop()


async def test_cancelled_and_lost_runs_teach_nothing(db: Database, bus: MemoryBus) -> None:
    service = OptimizerService(db, bus)
    await service.start()
    try:
        status = PartitionStatus(
            previous_state=State.RUNNING,
            task_name="unit",
            project="p",
            revision=None,
            partition=TaskPartition(
                id="x",
                task_id="t",
                request_id="r",
                job_id=None,
                index=1,
                count=1,
                files=["a"],
                container_type="linux",
                state=State.CANCELLED,
                run=0,
                priority=0,
                started_at=utcnow(),
                finished_at=utcnow(),
            ),
        )
        await bus.publish(
            topics.PARTITIONS, topics.routing_key(None, "t", "x", 0, "linux", State.CANCELLED), status.wire()
        )
        await everything_before_learned(bus, service)
        assert await service.file_history("p", "unit") == []
    finally:
        await service.stop()


async def test_one_run_ten_times_slower_plans_as_before_and_a_second_such_run_moves_the_plan(
    db: Database, bus: MemoryBus
) -> None:
    """The noisy neighbour of #32: one partition's run on a starved machine took 10x its files'
    history. Held, it changes nothing; the next run agreeing makes it the files' time."""
    service = OptimizerService(db, bus)
    await service.start()
    try:
        files = sorted(TRUE)
        first = await service.plan(plan_request(files))
        await finish(bus, first, report_files=True, request_id="req1")  # one sample each: the mean would take half
        await everything_before_learned(bus, service)
        before = await service.plan(plan_request(files))
        starved = {f: s * (10 if f in before.tasks[0].partitions[0].files else 1) for f, s in TRUE.items()}

        await finish(bus, before, report_files=True, request_id="req3", truth=starved)
        await everything_before_learned(bus, service)

        after = await service.plan(plan_request(files))
        assert after.tasks[0].partitions == before.tasks[0].partitions
        rows = {r.file: r for r in await service.file_history("p", "unit")}
        assert {f: r.estimate for f, r in rows.items()} == TRUE

        await finish(bus, after, report_files=True, request_id="req4", truth=starved)  # it is the files, after all
        await everything_before_learned(bus, service)
        rows = {r.file: r for r in await service.file_history("p", "unit")}
        slow = before.tasks[0].partitions[0].files
        assert all(rows[f].estimate > TRUE[f] for f in slow)
        assert all(rows[f].estimate == TRUE[f] for f in files if f not in slow)
    finally:
        await service.stop()
