"""The partitioning algorithm: balanced against the lower bound, deterministic, stable, exact when small."""

from __future__ import annotations

import random
import statistics
import time

import pytest

from infrax.optimizer import partitioning
from infrax.optimizer.partitioning import Partitioning, lower_bound, partition, split_evenly
from tests.optimizer.brute import optimum_by_count

COUNTS = (2, 4, 8, 16, 32)


def cases(suites: dict[str, dict[str, float]]) -> list[tuple[str, int]]:
    return [(name, n) for name, items in suites.items() for n in COUNTS if n <= len(items) / 2]


def items_of(durations: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(durations.items())


def where(result: Partitioning) -> dict[str, int]:
    return {f: i + 1 for i, part in enumerate(result.parts) for f in part}


def longest(parts: list[list[str]], durations: dict[str, float]) -> float:
    return max(sum(durations[f] for f in part) for part in parts)


def check_shape(result: Partitioning, items: list[tuple[str, float]], count: int) -> None:
    """Every file exactly once, the asked count (or one per file), no empty partition."""
    assert sorted(f for part in result.parts for f in part) == sorted(f for f, _ in items)
    assert len(result.parts) == max(1, min(count, len(items)))
    assert all(result.parts) or not items


def test_balanced_and_deterministic_on_the_real_data(runtime_suites: dict[str, dict[str, float]]) -> None:
    naive_worst = 0.0
    for name, count in cases(runtime_suites):
        durations = runtime_suites[name]
        items = items_of(durations)
        result = partition(items, count)
        check_shape(result, items, count)
        bound = lower_bound(list(durations.values()), count)
        assert longest(result.parts, durations) <= bound * 1.005, (name, count, result.method)
        assert partition(items, count).parts == result.parts, "same input, same partitions"
        naive_worst = max(naive_worst, longest(split_evenly([f for f, _ in items], count), durations) / bound)
    assert naive_worst > 4, "the data set is the one the issue describes: naive chunking is far off"


def test_a_few_files_added_and_removed_keep_most_files_in_place(runtime_suites: dict[str, dict[str, float]]) -> None:
    churns = []
    for name, count in cases(runtime_suites):
        durations = runtime_suites[name]
        before = where(partition(items_of(durations), count))
        rng = random.Random(f"{name}/{count}")
        k = round(len(durations) * 0.05)
        removed = set(rng.sample(sorted(durations), k))
        changed = {f: d for f, d in durations.items() if f not in removed}
        changed |= {f"new/{i}": statistics.median(durations.values()) for i in range(k)}
        result = partition(items_of(changed), count, before)
        check_shape(result, items_of(changed), count)
        assert longest(result.parts, changed) <= lower_bound(list(changed.values()), count) * 1.02, (name, count)
        after = where(result)
        kept = [f for f in before if f in after]
        churns.append(sum(before[f] != after[f] for f in kept) / len(kept))
        assert result.moved == sum(before[f] != after[f] for f in kept)
    assert max(churns) <= 0.15


def test_shape_holds_on_awkward_inputs() -> None:
    for seed in range(400):
        rng = random.Random(seed)
        n, count = rng.randint(1, 30), rng.randint(1, 12)
        items = [(f"f{i}", rng.choice([0.0, 0.0, 1.0, 2.5, 10.0, rng.random() * 100])) for i in range(n)]
        check_shape(partition(items, count), items, count)
        previous = {f: rng.randint(-1, count + 2) for f, _ in items if rng.random() < 0.7}
        check_shape(partition(items, count, previous), items, count)


def test_no_files_make_one_empty_partition() -> None:
    result = partition([], 4)
    assert result.parts == [[]] and result.makespan == 0.0


def test_equal_durations_give_contiguous_chunks() -> None:
    files = [f"tests/test_{i:02d}.py" for i in range(10)]
    result = partition([(f, 1.0) for f in files], 3)
    assert result.parts == split_evenly(files, 3) == [files[:4], files[4:7], files[7:]]


def brute_force(sizes: list[float], count: int) -> float:
    return optimum_by_count(sizes)[min(count, len(sizes))]


def test_small_inputs_are_split_optimally() -> None:
    for seed in range(150):
        rng = random.Random(seed)
        n, count = rng.randint(2, 9), rng.randint(2, 5)
        sizes = [float(rng.randint(1, 40)) for _ in range(n)]
        result = partition([(f"f{i}", s) for i, s in enumerate(sizes)], count)
        assert result.makespan == pytest.approx(brute_force(sizes, min(count, n))), (sizes, count, result.method)


def test_a_balanced_previous_assignment_is_kept_exactly() -> None:
    items = [(f"f{i}", float(d)) for i, d in enumerate([5, 5, 4, 4, 3, 3, 2, 2])]
    previous = {"f0": 2, "f3": 2, "f1": 1, "f2": 1, "f4": 1, "f7": 2, "f5": 2, "f6": 1}  # 14 and 14
    result = partition(items, 2, previous)
    assert where(result) == previous
    assert (result.kept, result.moved) == (8, 0)


def test_a_bad_previous_assignment_is_rebalanced_with_few_moves(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(7)
    items = [(f"f{i:03d}", rng.uniform(1, 20)) for i in range(200)]
    previous = {f: 1 + i * 4 // 200 for i, (f, _) in enumerate(items)}  # contiguous quarters
    items[3] = (items[3][0], 400.0)  # one file got much slower
    result = partition(items, 4, previous, tolerance=0.01)
    assert result.makespan <= result.lower_bound * 1.01 + 1e-6
    assert result.moved <= 40 and result.method.startswith("fewest files moved")

    monkeypatch.setattr(partitioning, "fewest_moves", lambda *_: None)  # the greedy repair alone
    greedy = partition(items, 4, previous, tolerance=0.01)
    assert greedy.makespan <= greedy.lower_bound * 1.01 + 1e-6
    assert where(greedy)["f003"] == 1, "the slow file itself stays; others make room"
    assert result.moved < greedy.moved, "the exact plan moves fewer files than the repair"


def test_a_lopsided_previous_assignment_is_swapped_back_into_balance() -> None:
    items = [("a", 10.0), ("b", 10.0), ("c", 1.0), ("d", 1.0)]
    result = partition(items, 2, {"a": 2, "b": 2, "c": 1, "d": 1}, tolerance=0.0)
    assert result.makespan == 11.0
    assert (result.kept, result.moved) == (2, 2)


def test_previous_numbers_survive_a_full_rebalance() -> None:
    # Keeping files in place cannot reach the balance asked for: the fresh split is used, its
    # partitions numbered so that most files keep their number.
    items = [("a", 6.0), ("b", 5.0), ("c", 3.0), ("d", 12.0), ("e", 12.0), ("f", 9.0)]
    previous = {"a": 3, "b": 2, "c": 1, "d": 1, "e": 1, "f": 2}
    result = partition(items, 3, previous, tolerance=0.0)
    assert "renumbered" in result.method
    assert result.makespan == brute_force([d for _, d in items], 3) == 17.0
    assert result.kept >= 4 and result.kept + result.moved == 6
    assert {f for f, i in where(result).items() if previous[f] == i} == {"a", "b", "c", "e"}


def test_plans_ten_thousand_files_fast() -> None:
    rng = random.Random(0)
    items = [(f"tests/file-{i:05d}.py", rng.lognormvariate(0, 1.5)) for i in range(10_000)]
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        result = partition(items, 32)
        best = min(best, time.perf_counter() - start)
    assert result.ratio <= 1.005
    # The benchmark shows the real figure (target 50 ms); this bound only catches a collapse on a busy machine.
    assert best < 0.5
