"""`make bench-optimizer`: the optimizer's partitions on real runtime data, against the lower bound.

Data: ../shared/data/runtimes/ beside the repository (see its SOURCE.md), read in place:
Mozilla's manifest runtimes per suite, and a pytest-split `.test_durations` summed per file.
For every suite with at least 50 items and every N in {2, 4, 8, 16, 32} with N <= items / 2 it
prints makespan / lower bound (lower bound = max(total / N, longest item)) for the optimizer
and for naive equal-count chunking (in path order), then the worst and mean ratios; the churn
when 5% of files are removed and 5% added at the suite's median duration (and when every
duration drifts by up to 20%), the worst over 20 random draws of each case; and the time to
plan 10,000 files into 32 partitions (the planner alone, and through the service with the
history read from SQLite).
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from infrax.bus.memory import MemoryBus
from infrax.model import ContainerType, ExecutionPlan, PlanRequest, TaskDefinition
from infrax.optimizer.history import FileHistory, History, Sample
from infrax.optimizer.partitioning import lower_bound, split_evenly
from infrax.optimizer.planner import Planner
from infrax.optimizer.service import OptimizerService
from infrax.store import Database

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "runtimes"
COUNTS = (2, 4, 8, 16, 32)
MIN_ITEMS = 50
SEEDS = 20  # random draws of each change per case: the bench prints the worst, not one draw
TYPE = ContainerType(name="bench", tags=["bench"])


def load_suites(folder: Path = DATA) -> dict[str, dict[str, float]]:
    """{suite: {item: seconds}} for every suite with at least MIN_ITEMS items."""
    suites: dict[str, dict[str, float]] = {}
    manifests = json.loads((folder / "manifest-runtimes-unix.json").read_text())
    for suite, items in manifests.items():
        suites[f"mozilla/{suite}"] = {name: float(seconds) for name, seconds in items.items()}
    per_file: dict[str, float] = defaultdict(float)
    for test_id, seconds in json.loads((folder / "tilavarauspalvelu-core.test_durations.json").read_text()).items():
        per_file[test_id.split("::", 1)[0]] += float(seconds)
    suites["pytest-split/tilavarauspalvelu-core"] = dict(per_file)
    return {name: items for name, items in suites.items() if len(items) >= MIN_ITEMS}


def plan(
    planner: Planner, name: str, durations: dict[str, float], count: int, previous: dict[str, int] | None = None
) -> ExecutionPlan:
    """The optimizer's plan for one task whose history is `durations` (and `previous` partitions)."""
    return planner.plan(*request(name, durations, count, previous))


def request(
    name: str, durations: dict[str, float], count: int, previous: dict[str, int] | None = None
) -> tuple[PlanRequest, History]:
    """What the optimizer service hands its planner: the request, and the history it loaded."""
    task = TaskDefinition(
        name=name, files=sorted(durations), container_tag=["bench"], bootstrapper="-", partitions=count
    )
    known = {
        f: FileHistory(d, 1, (previous or {}).get(f), count if previous and f in previous else None)
        for f, d in durations.items()
    }
    return PlanRequest(project="bench", tasks=[task], container_types=[TYPE]), {(name, TYPE.name): known}


def assignment(result: ExecutionPlan) -> dict[str, int]:
    return {f: part.index for part in result.tasks[0].partitions for f in part.files}


def makespan(parts: list[list[str]], durations: dict[str, float]) -> float:
    return max(sum(durations[f] for f in part) for part in parts)


def churn(before: dict[str, int], after: dict[str, int]) -> float:
    kept = [f for f in before if f in after]
    return sum(before[f] != after[f] for f in kept) / len(kept)


def main() -> int:
    if not DATA.is_dir():
        print(f"no runtime data at {DATA}: the shared folder must sit beside the repository", file=sys.stderr)
        return 1
    suites = load_suites()
    planner = Planner()
    print(f"Optimizer benchmark on {DATA} ({len(suites)} suites with at least {MIN_ITEMS} items)\n")
    print("Makespan / lower bound (lower bound = max(total / N, longest item))")
    print(f"{'suite':44} {'items':>5} {'N':>3} {'lower bound':>12} {'optimizer':>10} {'naive':>8}")
    ours: list[float] = []
    naive: list[float] = []
    cases: list[tuple[str, int]] = []
    for name, durations in suites.items():
        files = sorted(durations)
        for count in COUNTS:
            if count > len(files) / 2:
                continue
            bound = lower_bound(list(durations.values()), count)
            result = plan(planner, name, durations, count)
            ratio = makespan([p.files for p in result.tasks[0].partitions], durations) / bound
            naive_ratio = makespan(split_evenly(files, count), durations) / bound
            ours.append(ratio)
            naive.append(naive_ratio)
            cases.append((name, count))
            print(f"{name:44} {len(files):5} {count:3} {bound:10.1f} s {ratio:10.4f} {naive_ratio:8.4f}")
    print(
        f"{'worst ratio':66} {max(ours):10.4f} {max(naive):8.4f}   "
        f"(target: optimizer <= 1.005: {_verdict(max(ours) <= 1.005)})"
    )
    print(f"{'mean ratio':66} {statistics.mean(ours):10.4f} {statistics.mean(naive):8.4f}")

    print(
        f"\nStability over {SEEDS} random draws per case: share of the files kept that change partition, "
        "previous partitions known from history (worst over every case and draw)"
    )
    for label, change in (
        ("5% of files removed, 5% added at the median", _add_remove),
        ("every duration drifts by a factor in [0.8, 1.2]", _drift),
    ):
        churns, ratios, slowest = [], [], 0.0
        per_case: list[tuple[float, float, str, int]] = []
        for name, count in cases:
            durations = suites[name]
            before = assignment(plan(planner, name, durations, count))
            case_churn, case_ratio = 0.0, 0.0
            for seed in range(SEEDS):
                changed = change(durations, random.Random(f"{name}/{count}/{seed}"))
                started = time.perf_counter()
                after_plan = plan(planner, name, changed, count, before)
                slowest = max(slowest, time.perf_counter() - started)
                moved = churn(before, assignment(after_plan))
                parts = [p.files for p in after_plan.tasks[0].partitions]
                ratio = makespan(parts, changed) / lower_bound(list(changed.values()), count)
                churns.append(moved)
                ratios.append(ratio)
                case_churn, case_ratio = max(case_churn, moved), max(case_ratio, ratio)
            per_case.append((case_churn, case_ratio, name, count))
        print(
            f"  {label}: churn worst {max(churns):.1%}, mean {statistics.mean(churns):.1%}; "
            f"ratio worst {max(ratios):.4f}, mean {statistics.mean(ratios):.4f}; slowest plan {slowest * 1000:.0f} ms"
        )
        for case_churn, case_ratio, name, count in sorted(per_case, reverse=True)[:3]:
            print(f"    worst cases: {name} N={count}: churn {case_churn:.1%}, ratio {case_ratio:.4f}")
        if change is _add_remove:
            met = max(churns) <= 0.15 and max(ratios) <= 1.02
            print(f"    (target: churn <= 15% at a worst ratio <= 1.02 over {SEEDS} draws a case: {_verdict(met)})")

    pool = [d for durations in suites.values() for d in durations.values()]
    rng = random.Random(10_000)
    big = {f"tests/file-{i:05d}.py": rng.choice(pool) for i in range(10_000)}
    fresh = request("big", big, 32)
    fresh_ms = _best_ms(lambda: planner.plan(*fresh))
    previous = assignment(planner.plan(*fresh))
    sticky = request("big", _drift(big, random.Random(1)), 32, previous)
    sticky_ms = _best_ms(lambda: planner.plan(*sticky))
    print("\nTime of Planner.plan for 10,000 files (durations drawn from the data) into 32 partitions, best of 5:")
    print(f"  no previous partitions: {fresh_ms:.1f} ms   (target <= 50 ms: {_verdict(fresh_ms <= 50)})")
    print(f"  every file's previous partition known, durations drifted: {sticky_ms:.1f} ms")
    service_ms = asyncio.run(_service_ms(big, previous))
    print(f"  through OptimizerService, loading that history from SQLite first: {service_ms:.1f} ms")
    return 0


async def _service_ms(durations: dict[str, float], previous: dict[str, int]) -> float:
    """The same plan as the optimizer serves it: the history read from the store, then planned."""
    with tempfile.TemporaryDirectory() as folder:
        db = Database(f"sqlite:///{folder}/bench.sqlite")
        await db.create_schema()
        try:
            service = OptimizerService(db, MemoryBus())
            by_partition: dict[int, list[str]] = defaultdict(list)
            for f, index in previous.items():
                by_partition[index].append(f)
            await service.history.record(
                [
                    Sample(
                        "bench",
                        "big",
                        TYPE.name,
                        f"run-{index}",
                        files,
                        index,
                        32,
                        None,
                        {f: durations[f] for f in files},
                    )
                    for index, files in sorted(by_partition.items())
                ]
            )
            plan_request, _ = request("big", durations, 32)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                await service.plan(plan_request)
                times.append((time.perf_counter() - start) * 1000)
            return min(times)
        finally:
            await db.close()


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def _add_remove(durations: dict[str, float], rng: random.Random) -> dict[str, float]:
    k = round(len(durations) * 0.05)
    removed = set(rng.sample(sorted(durations), k))
    median = statistics.median(durations.values())
    changed = {f: d for f, d in durations.items() if f not in removed}
    changed.update({f"added/new-{i:03d}": median for i in range(k)})
    return changed


def _drift(durations: dict[str, float], rng: random.Random) -> dict[str, float]:
    return {f: d * rng.uniform(0.8, 1.2) for f, d in sorted(durations.items())}


def _best_ms(work: object) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        work()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return min(times)


if __name__ == "__main__":
    sys.exit(main())
