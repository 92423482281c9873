"""Turning task definitions and runtime history into an execution plan (pure: no I/O).

For each task, in order: the container type (the first carrying every requested tag); skip it
when the push changed nothing it depends on; estimate each file (history, else the median of
the task's known files, else `default_duration`); choose the partition count (explicit, else
the fewest meeting `target_wall_time`, else `files_per_partition` where the task or the
installation sets one, else `auto`: `infrax.optimizer.counts`; a partition's overhead
is its container type's `overhead` plus what the optimizer learned of the task's checkout and
start); split the files so that the
longest partition is as short as possible, keeping files in the partition they last ran in
while that costs at most `tolerance` of balance. Then the dispatch order: priority, higher
first, then the longest expected partition first.
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections.abc import Mapping, Sequence

from infrax import pathspecs
from infrax.model import (
    ContainerType,
    ExecutionPlan,
    PlannedPartition,
    PlannedTask,
    PlanRequest,
    TaskDefinition,
    pick_container_type,
)
from infrax.optimizer.container_starts import ContainerStarts
from infrax.optimizer.counts import auto_count
from infrax.optimizer.history import FileHistory, History
from infrax.optimizer.overheads import Overhead, Overheads
from infrax.optimizer.partitioning import Partitioning, lower_bound, partition, split_evenly

__all__ = ["Planner", "choose_count", "pick_container_type", "split_evenly", "unchanged_reason"]


DEFAULT_FILES_PER_PARTITION = 10  # a task with a target wall time and no history yet


class Planner:
    def __init__(
        self, files_per_partition: int | None = 10, *, tolerance: float = 0.02, default_duration: float = 1.0
    ) -> None:
        self.files_per_partition = files_per_partition  # None: `partitions: auto` for tasks that give no count
        self.tolerance = tolerance  # balance given up, at most, to keep files where they ran last
        self.default_duration = default_duration  # seconds per file of a task with no history at all

    def plan(
        self,
        request: PlanRequest,
        history: History | None = None,
        *,
        explain: bool = False,
        overheads: Overheads | None = None,
        starts: ContainerStarts | None = None,
    ) -> ExecutionPlan:
        types = {t.name: t for t in request.container_types}
        learned = overheads or {}
        starts = starts or {}
        planned = [
            self._plan_task(i, task, request, history or {}, learned, starts, explain)
            for i, task in enumerate(request.tasks)
        ]
        overhead = {
            task.position: own_start(types[task.container_type], starts)[0]
            + learned.get((task.name, task.container_type), Overhead()).seconds
            for task in planned
            if task.container_type
        }
        queue = sorted(
            (
                -task.priority,
                -(part.expected_duration or 0.0) - overhead[task.position],
                task.position,
                part.index,
            )
            for task in planned
            if task.container_type and not task.skipped
            for part in task.partitions
        )
        order = [(position, index) for _, _, position, index in queue]
        durations = {
            (task.position, part.index): (
                task.container_type,
                (part.expected_duration or 0.0) + overhead[task.position],
            )
            for task in planned
            if task.container_type and not task.skipped
            for part in task.partitions
        }
        makespan = _simulate(order, durations, types)
        explanation = None
        if explain:
            running = sum(1 for t in planned if t.container_type and not t.skipped)
            skipped = sum(1 for t in planned if t.skipped)
            explanation = [
                f"{running} task(s) run in {len(order)} partition(s); {skipped} skipped; "
                f"{len(planned) - running - skipped} without a container type",
                "dispatch order: priority (higher first), then the longest expected partition (estimate plus "
                "its overhead) first; ties by task position, then partition number",
                f"expected makespan {makespan:.1f} s: that order simulated on each container type's "
                "max_concurrent containers, as if this request ran alone",
            ]
        return ExecutionPlan(
            tasks=planned, dispatch_order=order, expected_makespan=round(makespan, 3), explanation=explanation
        )

    def _plan_task(
        self,
        position: int,
        task: TaskDefinition,
        request: PlanRequest,
        history: History,
        overheads: Overheads,
        starts: ContainerStarts,
        explain: bool,
    ) -> PlannedTask:
        why: list[str] = []
        base = PlannedTask(position=position, name=task.name, container_type=None, priority=task.priority)
        container_type = pick_container_type(task.container_tag, request.container_types)
        if container_type is None:
            reason = f"no container type has tags {task.container_tag}"
            return base.model_copy(update={"reason": reason, "explanation": [reason] if explain else None})
        base.container_type = container_type.name
        why.append(f"container type {container_type.name}: the first whose tags include {task.container_tag}")
        skip, match = changed_paths_decision(task, request.changed_paths)
        if not skip and task.file_patterns is not None:
            selected = ", ".join(f"{p!r} {n}" for p, n in task.file_patterns.items())
            if task.files:
                why.append(f"files: {len(task.files)} selected by pattern ({selected})")
            else:
                skip = f"skipped: its file patterns took no file ({selected}; allowEmpty)"
        if skip:
            return base.model_copy(
                update={"skipped": True, "reason": skip, "explanation": why + [skip] if explain else None}
            )
        why.append(match)
        files = list(dict.fromkeys(task.files))
        known = history.get((task.name, container_type.name), {})
        learned = overheads.get((task.name, container_type.name), Overhead())
        start, how = own_start(container_type, starts)
        overhead = start + learned.seconds
        why.append(
            f"overhead {overhead:.1f} s a partition: {start:.1f} s of {container_type.name}'s own start ({how}), "
            f"learned {learned.describe()}"
        )
        durations = self._estimates(files, known, why, task.file_sizes or {})
        count, chosen = self._count(task, files, durations, known, overhead, container_type.max_concurrent, why)
        previous = {f: h.last_index for f in files if (h := known.get(f)) and h.last_count == count and h.last_index}
        ceiling = None
        if chosen is not None and task.target_wall_time:
            goal = max(task.target_wall_time - overhead, max(durations))
            ceiling = goal if chosen.makespan <= goal * (1 + 1e-9) else None
        result = _split(files, durations, count, previous, self.tolerance, ceiling)
        why.append(_describe_balance(result, count))
        if previous:
            why.append(
                f"stability: {result.kept} of {result.kept + result.moved} files that ran before with "
                f"{count} partitions kept their partition; {result.moved} moved"
                + "".join(f" ({note})" for note in result.notes)
            )
        partitions = [
            PlannedPartition(index=i + 1, files=part, expected_duration=round(load, 3))
            for i, (part, load) in enumerate(zip(result.parts, result.loads, strict=True))
        ]
        makespan = result.makespan + overhead
        why.append(
            f"expected wall time {makespan:.1f} s: longest partition {result.makespan:.1f} s plus "
            f"{overhead:.1f} s overhead"
        )
        return base.model_copy(
            update={
                "partitions": partitions,
                "expected_makespan": round(makespan, 3),
                "explanation": why if explain else None,
            }
        )

    def _estimates(
        self, files: list[str], known: Mapping[str, FileHistory], why: list[str], sizes: Mapping[str, int]
    ) -> list[float]:
        values = [h.estimate for f in files if (h := known.get(f)) is not None]
        unknown = [f for f in files if f not in known]
        by_size = _by_size(files, known, sizes, self.default_duration) if unknown else None
        if by_size is not None:
            estimate, source = by_size
            fallback = statistics.median(estimate[f] for f in unknown)
            durations = [h.estimate if (h := known.get(f)) is not None else estimate[f] for f in files]
        else:
            if values:
                fallback, source = statistics.median(values), "the median of the task's known files"
            elif known:
                fallback, source = (
                    statistics.median(h.estimate for h in known.values()),
                    "the median of the task's history",
                )
            else:
                fallback, source = self.default_duration, "the default (no history for this task yet)"
            durations = [h.estimate if (h := known.get(f)) is not None else fallback for f in files]
        said = f"by {source} (median {fallback:.3g} s)" if by_size is not None else f"at {fallback:.3g} s, {source}"
        why.append(
            f"estimates: {len(values)} of {len(files)} files from history"
            + (f"; {len(unknown)} estimated {said}" if unknown else "")
        )
        return durations

    def _count(
        self,
        task: TaskDefinition,
        files: list[str],
        durations: list[float],
        known: Mapping[str, FileHistory],
        overhead: float,
        containers: int,
        why: list[str],
    ) -> tuple[int, Partitioning | None]:
        n = max(1, len(files))
        per = task.files_per_partition or self.files_per_partition
        if task.partitions == "auto" or (task.partitions is None and not task.target_wall_time and per is None):
            count, chosen, tried = auto_count(
                files or [""], durations or [0.0], overhead, containers, task.max_partitions
            )
            costs = ", ".join(f"{c}: {cost:.1f} s" for c, cost in tried)
            why.append(
                f"partitions: {count} (auto): the count with the least expected wall time plus its overheads' "
                f"share of the type's {containers} containers, at {overhead:.1f} s a partition (tried {costs})"
            )
            return count, chosen
        if isinstance(task.partitions, int):
            count = min(task.partitions, n)
            why.append(
                f"partitions: {count}, as the task asks"
                + ("" if count == task.partitions else f" ({task.partitions}, but only {n} files)")
            )
            return count, None
        if task.target_wall_time and known and files:
            count, chosen, tried = choose_count(files, durations, task.target_wall_time, overhead, task.max_partitions)
            met = chosen.makespan + overhead <= task.target_wall_time * (1 + 1e-9)
            attempts = ", ".join(f"{c}: {m + overhead:.1f} s" for c, m in tried)
            if met:
                why.append(
                    f"partitions: {count}, the fewest whose longest partition plus {overhead:.1f}"
                    f" s overhead meets the target {task.target_wall_time:.1f} s (tried {attempts})"
                )
            else:
                why.append(
                    f"partitions: {count}; no count up to {task.max_partitions} meets the target "
                    f"{task.target_wall_time:.1f} s, so the fewest that come closest (tried {attempts})"
                )
            return count, chosen
        per = per or DEFAULT_FILES_PER_PARTITION
        count = min(task.max_partitions, max(1, math.ceil(len(files) / per)))
        because = "no history to aim at the target wall time with; " if task.target_wall_time else ""
        why.append(
            f"partitions: {count}: {because}{len(files)} files at {per} per partition, at most {task.max_partitions}"
        )
        return count, None


def choose_count(
    files: Sequence[str], durations: Sequence[float], target: float, overhead: float, max_count: int
) -> tuple[int, Partitioning, list[tuple[int, float]]]:
    """The fewest partitions whose longest partition plus `overhead` is at most `target`.

    When even one file per partition cannot meet the target, the goal becomes the longest file
    itself: the fewest partitions that get down to it. When no count up to `max_count` meets the
    goal, `max_count` (or the number of files, if smaller). Returns the count, its fresh
    partitioning, and the (count, longest partition) of each count tried.
    """
    items = list(zip(files, durations, strict=True))
    cap = max(1, min(max_count, len(items)))
    goal = max(target - overhead, max(durations))
    tried: list[tuple[int, float]] = []
    start = max(1, min(cap, math.ceil(sum(durations) / goal - 1e-9))) if goal > 0 else cap
    best: tuple[int, Partitioning] | None = None
    for count in range(start, cap + 1):
        if lower_bound(durations, count) > goal * (1 + 1e-9):
            continue
        result = partition(items, count)
        tried.append((count, result.makespan))
        best = (count, result)
        if result.makespan <= goal * (1 + 1e-9):
            return count, result, tried
    if best is None or best[0] != cap:
        best = (cap, partition(items, cap))
        tried.append((cap, best[1].makespan))
    return best[0], best[1], tried


SIZE_KNOWN_MIN = 3  # known files with a size before their seconds per byte price the others


def _by_size(
    files: list[str], known: Mapping[str, FileHistory], sizes: Mapping[str, int], default: float
) -> tuple[dict[str, float], str] | None:
    """Estimates of the files without history from their sizes (what a first push shows): at the
    known files' seconds per byte when enough of them have a size; else, with no history at all,
    the default scaled by the size's power of two against the median size, so that files within
    a factor of about 1.4 of each other weigh the same (a size is a rough guide: near-equal files
    keep contiguous chunks) and a file four times the median weighs four. None without sizes."""
    unknown = [f for f in files if f not in known and sizes.get(f)]
    if not unknown or len(unknown) < len([f for f in files if f not in known]):
        return None  # a file without its size: the sizes do not cover what is to be estimated
    priced = [(known[f].estimate, sizes[f]) for f in files if f in known and sizes.get(f)]
    if len(priced) >= SIZE_KNOWN_MIN:
        rate = sum(seconds for seconds, _ in priced) / sum(size for _, size in priced)
        return {f: rate * sizes[f] for f in unknown}, f"size, at the known files' {rate * 1024:.3g} s per KB"
    if known:
        return None  # some history, too little to price a byte: the median of the known files
    middle = statistics.median(sizes[f] for f in unknown)
    return (
        {f: default * 2.0 ** round(math.log2(sizes[f] / middle)) for f in unknown},
        "size (no history yet): the default times the file's size against the median, to a power of two",
    )


def own_start(container_type: ContainerType, starts: ContainerStarts) -> tuple[float, str]:
    """A container type's own per-partition overhead: its measured starts once there are any, else
    the `overhead` its configuration sets; and which it is."""
    learned = starts.get(container_type.name)
    if learned is None or learned.samples == 0:
        return container_type.overhead, "as configured"
    return learned.seconds, f"learned over {learned.samples} start(s)"


def _split(
    files: list[str],
    durations: list[float],
    count: int,
    previous: dict[str, int],
    tolerance: float,
    ceiling: float | None,
) -> Partitioning:
    items = list(zip(files, durations, strict=True))
    result = partition(items, count, previous or None, tolerance=tolerance)
    if ceiling is not None and previous and result.makespan > ceiling * (1 + 1e-9):
        # Keeping files in place would break the target wall time: rebalance fully instead.
        result = partition(items, count, previous, tolerance=0.0)
        if result.makespan > ceiling * (1 + 1e-9):
            result = partition(items, count)
    return result


def _describe_balance(result: Partitioning, count: int) -> str:
    if not result.loads or result.lower_bound <= 0:
        return f"balance: {len(result.parts)} partition(s), nothing to balance ({result.method})"
    return (
        f"balance: longest partition {result.makespan:.1f} s, lower bound {result.lower_bound:.1f} s "
        f"(max of total / {len(result.parts)} and the longest file), ratio {result.ratio:.4f} ({result.method})"
    )


def _simulate(
    order: list[tuple[int, int]],
    durations: Mapping[tuple[int, int], tuple[str | None, float]],
    types: Mapping[str, ContainerType],
) -> float:
    """When the last partition would end, dispatched in `order` onto max_concurrent containers per type
    (each partition's seconds include its overhead)."""
    slots: dict[str, list[float]] = {}
    end = 0.0
    for key in order:
        type_name, seconds = durations[key]
        assert type_name is not None
        kind = types[type_name]
        free = slots.setdefault(type_name, [0.0] * kind.max_concurrent)
        start = heapq.heappop(free)
        finish = start + seconds
        heapq.heappush(free, finish)
        end = max(end, finish)
    return end


def path_matches(path: str, pattern: str) -> bool:
    """`.gitignore`'s rules (infrax.pathspecs): `**/` is zero or more folders, a folder takes what is below it."""
    return pathspecs.matches(path, pattern)


def changed_paths_decision(task: TaskDefinition, changed_paths: list[str] | None) -> tuple[str | None, str]:
    """(reason to skip, or None) and why it runs."""
    if task.paths is None:
        return None, "runs: the task declares no paths, so every push may affect it"
    if changed_paths is None:
        return None, "runs: the push's changed paths are unknown"
    for path in changed_paths:
        for pattern in task.paths:
            if path_matches(path, pattern):
                return None, f"runs: changed path {path!r} matches {pattern!r}"
    shown = ", ".join(changed_paths[:5]) + (f" and {len(changed_paths) - 5} more" if len(changed_paths) > 5 else "")
    return (
        f"skipped: none of the {len(changed_paths)} changed paths ({shown or 'none'}) matches the task's "
        f"paths {task.paths}"
    ), ""


def unchanged_reason(task: TaskDefinition, changed_paths: list[str] | None) -> str | None:
    """Why the task need not run for this push, or None when it must."""
    return changed_paths_decision(task, changed_paths)[0]
