"""The planner: skipping, partition counts, estimates, ordering and explanations."""

from __future__ import annotations

import random
from typing import Any

from infrax.model import ContainerType, PlanRequest, TaskDefinition
from infrax.optimizer.history import FileHistory
from infrax.optimizer.planner import Planner, path_matches
from tests.optimizer.brute import optimum_by_count

LINUX = ContainerType(name="linux", tags=["linux"], max_concurrent=100)


def task(name: str = "tests", files: list[str] | None = None, **fields: Any) -> TaskDefinition:
    return TaskDefinition(
        name=name, files=files if files is not None else [], container_tag=["linux"], bootstrapper="run.sh", **fields
    )


def request(
    *tasks: TaskDefinition, changed: list[str] | None = None, types: list[ContainerType] | None = None
) -> PlanRequest:
    return PlanRequest(project="p", tasks=list(tasks), container_types=types or [LINUX], changed_paths=changed)


def known(durations: dict[str, float], type_name: str = "linux", name: str = "tests") -> dict:
    return {(name, type_name): {f: FileHistory(d, 1) for f, d in durations.items()}}


# -- skip unchanged ---------------------------------------------------------------------------


def test_a_docs_only_push_skips_tasks_that_declared_other_paths() -> None:
    backend = task("backend", ["tests/test_api.py"], paths=["src/**", "tests/"])
    frontend = task("frontend", ["ui/app.test.js"], paths=["ui/*"])
    everything = task("lint", ["setup.cfg"])  # declares no paths: depends on everything
    plan = Planner().plan(request(backend, frontend, everything, changed=["docs/index.md", "README.md"]))
    assert [t.skipped for t in plan.tasks] == [True, True, False]
    assert plan.tasks[0].reason is not None and "docs/index.md" in plan.tasks[0].reason
    assert "src/**" in plan.tasks[0].reason
    assert plan.tasks[0].partitions == [] and plan.tasks[2].partitions
    assert {position for position, _ in plan.dispatch_order} == {2}


def test_a_push_touching_a_declared_path_runs_the_task() -> None:
    backend = task("backend", ["tests/test_api.py"], paths=["src/**", "tests/"])
    frontend = task("frontend", ["ui/app.test.js"], paths=["ui/*"])
    plan = Planner().plan(request(backend, frontend, changed=["docs/index.md", "src/infrax/api.py"]), explain=True)
    assert [t.skipped for t in plan.tasks] == [False, True]
    assert plan.tasks[0].explanation is not None
    assert any("'src/infrax/api.py' matches 'src/**'" in line for line in plan.tasks[0].explanation)
    plan = Planner().plan(request(backend, frontend, changed=["tests/conftest.py"]))
    assert [t.skipped for t in plan.tasks] == [False, True]


def test_unknown_changed_paths_run_everything() -> None:
    plan = Planner().plan(request(task("backend", ["t.py"], paths=["src/*"]), changed=None))
    assert not plan.tasks[0].skipped


def test_path_patterns() -> None:
    assert path_matches("src/a/b.py", "src/*")  # `*` crosses `/`
    assert path_matches("src/a/b.py", "src")  # a plain path means everything under it
    assert path_matches("src/a/b.py", "src/")
    assert not path_matches("srcs/a.py", "src")
    assert path_matches("setup.py", "**/*.py") and path_matches("a/setup.py", "**/*.py")
    assert path_matches("docs/index.md", "*.md")
    assert not path_matches("docs/index.rst", "*.md")


# -- partition counts ---------------------------------------------------------------------------


def test_without_history_files_per_partition_gives_contiguous_chunks() -> None:
    files = [f"t{i:02d}.py" for i in range(25)]
    plan = Planner(files_per_partition=10).plan(request(task(files=files)))
    parts = plan.tasks[0].partitions
    assert [p.index for p in parts] == [1, 2, 3]
    assert [p.files for p in parts] == [files[:9], files[9:17], files[17:]]


def test_an_explicit_count_is_kept_and_capped_by_the_files() -> None:
    plan = Planner().plan(request(task(files=["a", "b", "c"], partitions=2), task("t2", ["a"], partitions=5)))
    assert len(plan.tasks[0].partitions) == 2 and len(plan.tasks[1].partitions) == 1


def test_no_files_run_once() -> None:
    plan = Planner().plan(request(task(files=[])))
    assert [p.files for p in plan.tasks[0].partitions] == [[]]


def test_duplicate_files_run_once() -> None:
    plan = Planner().plan(request(task(files=["a", "b", "a"], partitions=2)))
    assert sorted(f for p in plan.tasks[0].partitions for f in p.files) == ["a", "b"]


def test_target_wall_time_picks_the_fewest_partitions_that_meet_it_as_brute_force_does() -> None:
    checked_met = checked_unmet = 0
    for seed in range(80):
        rng = random.Random(seed)
        n = rng.randint(1, 7)
        sizes = [float(rng.randint(1, 30)) for _ in range(n)]
        overhead = float(rng.choice([0, 5, 20]))
        max_partitions = rng.randint(1, n + 1)
        target = rng.uniform(max(sizes) * 0.8, sum(sizes) * 1.1) + overhead
        files = [f"f{i}" for i in range(n)]
        kind = ContainerType(name="linux", tags=["linux"], overhead=overhead, max_concurrent=100)
        plan = Planner().plan(
            request(task(files=files, target_wall_time=target, max_partitions=max_partitions), types=[kind]),
            known(dict(zip(files, sizes, strict=True))),
        )
        chosen = len(plan.tasks[0].partitions)
        # Brute force: the optimum for every count, then the fewest meeting the goal (the longest
        # file, when the target is below it), else the maximum.
        cap = min(max_partitions, n)
        optimum = optimum_by_count(sizes)
        goal = max(target - overhead, max(sizes))
        meeting = [k for k in range(1, cap + 1) if optimum[k] <= goal + 1e-9]
        expected = meeting[0] if meeting else cap
        assert chosen == expected, (seed, sizes, overhead, target, max_partitions)
        expected_makespan = plan.tasks[0].expected_makespan
        assert expected_makespan is not None
        assert abs(expected_makespan - (optimum[chosen] + overhead)) < 1e-6
        if meeting:
            checked_met += 1
        else:
            checked_unmet += 1
    assert checked_met > 20 and checked_unmet > 3


def test_target_wall_time_counts_the_overhead() -> None:
    sizes = {f"f{i}": 10.0 for i in range(8)}  # 80 s of work
    slow_start = ContainerType(name="linux", tags=["linux"], overhead=30.0)
    plan = Planner().plan(request(task(files=list(sizes), target_wall_time=60.0)), known(sizes))
    assert len(plan.tasks[0].partitions) == 2  # 40 s each
    plan = Planner().plan(request(task(files=list(sizes), target_wall_time=60.0), types=[slow_start]), known(sizes))
    assert len(plan.tasks[0].partitions) == 3  # 30 s at most + 30 s start


# -- estimates and balance ------------------------------------------------------------------------


def test_unknown_files_are_estimated_at_the_median_of_the_known_ones() -> None:
    history = known({"a": 1.0, "b": 3.0, "c": 100.0})
    plan = Planner().plan(request(task(files=["a", "b", "c", "new1", "new2"], partitions=2)), history, explain=True)
    parts = plan.tasks[0].partitions
    assert sorted(p.expected_duration or 0.0 for p in parts) == [10.0, 100.0]  # a 1 + b 3 + two new ones at 3 s
    assert any("2 estimated at 3 s" in line for line in plan.tasks[0].explanation or [])


def test_history_balances_partitions() -> None:
    durations = {"a": 50.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 47.0, "f": 1.0}
    plan = Planner().plan(request(task(files=list(durations), partitions=2)), known(durations))
    assert [p.expected_duration for p in plan.tasks[0].partitions] == [51.0, 50.0]
    assert [p.files for p in plan.tasks[0].partitions] == [["a", "f"], ["b", "c", "d", "e"]]


def test_files_stay_in_the_partition_they_last_ran_in() -> None:
    durations = {f"f{i}": float(1 + i % 5) for i in range(40)}
    first = Planner().plan(request(task(files=list(durations), partitions=4)), known(durations))
    ran = {f: p.index for p in first.tasks[0].partitions for f in p.files}
    history = {
        ("tests", "linux"): {
            f: FileHistory(d * (1.1 if f == "f3" else 1.0), 2, ran[f], 4) for f, d in durations.items()
        }
    }
    files = list(durations) + ["f40"]
    second = Planner().plan(request(task(files=files, partitions=4)), history)
    after = {f: p.index for p in second.tasks[0].partitions for f in p.files}
    assert sum(after[f] != ran[f] for f in ran) <= 2


# -- ordering and makespan --------------------------------------------------------------------------


def test_dispatch_by_priority_then_longest_partition_first() -> None:
    low = task("low", ["l1", "l2"], partitions=2, priority=0)
    high = task("high", ["h1", "h2"], partitions=2, priority=5)
    history = {**known({"l1": 100.0, "l2": 10.0}, name="low"), **known({"h1": 1.0, "h2": 2.0}, name="high")}
    plan = Planner().plan(request(low, high), history)
    durations = {(t.position, p.index): p.expected_duration for t in plan.tasks for p in t.partitions}
    assert [durations[key] for key in plan.dispatch_order] == [2.0, 1.0, 100.0, 10.0]
    assert sorted(plan.dispatch_order) == sorted(durations)


def test_expected_makespan_simulates_the_containers_available() -> None:
    one = ContainerType(name="linux", tags=["linux"], max_concurrent=1, overhead=1.0)
    durations = {"a": 10.0, "b": 10.0, "c": 5.0}
    plan = Planner().plan(request(task(files=list(durations), partitions=3), types=[one]), known(durations))
    assert plan.expected_makespan == 28.0  # one container: 3 partitions one after another, 1 s start each
    plan = Planner().plan(request(task(files=list(durations), partitions=3)), known(durations))
    assert plan.expected_makespan == 10.0


def test_explain_gives_a_reason_for_each_decision() -> None:
    durations = {f"f{i}": float(i + 1) for i in range(10)}
    plan = Planner().plan(
        request(
            task(files=list(durations), target_wall_time=20.0),
            task("docs", ["d"], paths=["docs/"]),
            changed=["src/x.py"],
        ),
        known(durations),
        explain=True,
    )
    run, skipped = plan.tasks
    text = "\n".join(run.explanation or [])
    for needle in (
        "container type linux",
        "runs: the task declares no paths",
        "estimates: 10 of 10",
        "the fewest whose longest partition",
        "lower bound",
        "expected wall time",
    ):
        assert needle in text
    assert skipped.explanation and skipped.explanation[-1].startswith("skipped:")
    assert plan.explanation and any("expected makespan" in line for line in plan.explanation)
    assert Planner().plan(request(task(files=["a"])), explain=False).tasks[0].explanation is None


def test_a_task_without_a_container_type_says_so() -> None:
    odd = TaskDefinition(name="odd", files=["a"], container_tag=["windows"], bootstrapper="run.sh")
    plan = Planner().plan(request(odd))
    assert plan.tasks[0].container_type is None and "windows" in (plan.tasks[0].reason or "")
    assert plan.dispatch_order == []


# -- files without history, from their sizes -----------------------------------------------------


def test_a_first_push_is_balanced_by_the_files_sizes() -> None:
    # Four files of 4 KB and four of 1 KB: equal-count chunks in path order put the large ones together.
    sizes = {f"tests/test_{c}.py": 4096 if c in "abcd" else 1024 for c in "abcdefgh"}
    plan = Planner().plan(request(task(files=sorted(sizes), partitions=2, file_sizes=sizes)), explain=True)
    chunks = [part.files for part in plan.tasks[0].partitions]
    assert [sum(sizes[f] for f in chunk) for chunk in chunks] == [10240, 10240]
    assert any("estimated by size (no history yet)" in line for line in plan.tasks[0].explanation or [])
    # Without sizes: contiguous chunks, the four large files in the first.
    blind = Planner().plan(request(task(files=sorted(sizes), partitions=2)))
    assert blind.tasks[0].partitions[0].files == [f"tests/test_{c}.py" for c in "abcd"]


def test_files_of_nearly_the_same_size_keep_contiguous_chunks() -> None:
    sizes = {f"tests/test_{n}.py": 700 + n for n in range(6)}  # a byte or two apart: no telling them apart
    plan = Planner().plan(request(task(files=sorted(sizes), partitions=3, file_sizes=sizes)))
    assert [part.files for part in plan.tasks[0].partitions] == [sorted(sizes)[i : i + 2] for i in (0, 2, 4)]


def test_a_new_file_is_priced_at_the_known_files_seconds_per_byte() -> None:
    history = known({"tests/a.py": 2.0, "tests/b.py": 4.0, "tests/c.py": 6.0})  # 12 s for 12 KB: 1 s a KB
    sizes = {"tests/a.py": 2048, "tests/b.py": 4096, "tests/c.py": 6144, "tests/new.py": 30720}
    plan = Planner().plan(request(task(files=sorted(sizes), partitions=2, file_sizes=sizes)), history, explain=True)
    parts = plan.tasks[0].partitions
    new_part = next(p for p in parts if "tests/new.py" in p.files)
    assert new_part.files == ["tests/new.py"] and new_part.expected_duration == 30.0
    assert any("at the known files' 1 s per KB" in line for line in plan.tasks[0].explanation or [])


# -- partitions: auto -------------------------------------------------------------------------


def auto_plan(seconds_per_file: float, start: float, containers: int = 8, **fields: Any) -> Any:
    """A suite of 32 files with history, on `containers` containers that take `start` s to start."""
    files = [f"tests/test_{i:02d}.py" for i in range(32)]
    box = ContainerType(name="linux", tags=["linux"], max_concurrent=containers, overhead=start)
    return (
        Planner(files_per_partition=None)  # the installation leaves the count to auto
        .plan(
            request(task(files=files, **fields), types=[box]),
            known({f: seconds_per_file for f in files}),
            explain=True,
        )
        .tasks[0]
    )


def test_auto_gives_a_long_suite_every_container_and_a_short_or_slow_starting_one_fewer() -> None:
    long_suite = auto_plan(seconds_per_file=3.0, start=1.3)  # 96 s of tests
    short_suite = auto_plan(seconds_per_file=0.05, start=1.3)  # 1.6 s of tests
    slow_start = auto_plan(seconds_per_file=3.0, start=30.0)

    assert len(long_suite.partitions) == 8
    assert len(short_suite.partitions) < len(slow_start.partitions) < 8
    # 1.3 s + ⌈32 / k⌉ × 0.05 s + k × 1.3 s / 8 is least at k = 3 (2.34 s);
    # 30 s + ⌈32 / k⌉ × 3 s + k × 30 s / 8 at k = 4 (69 s; 5 takes 7 files, 69.75 s).
    assert (len(short_suite.partitions), len(slow_start.partitions)) == (3, 4)
    assert any("partitions: 8 (auto)" in line for line in long_suite.explanation or [])


def test_auto_is_the_default_without_files_per_partition_and_never_more_partitions_than_containers() -> None:
    two = auto_plan(seconds_per_file=3.0, start=1.3, containers=2)
    assert len(two.partitions) == 2
    explicit = auto_plan(seconds_per_file=3.0, start=1.3, containers=2, partitions="auto")
    assert explicit.partitions == two.partitions
    asked = auto_plan(seconds_per_file=3.0, start=1.3, containers=2, partitions=8)
    assert len(asked.partitions) == 8  # a count the task gives is its own
