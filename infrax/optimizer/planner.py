"""Turning task definitions into an execution plan."""

from __future__ import annotations

import math
from fnmatch import fnmatchcase

from infrax.model import ContainerType, ExecutionPlan, PlannedPartition, PlannedTask, PlanRequest, TaskDefinition


class Planner:
    def __init__(self, files_per_partition: int = 10) -> None:
        self.files_per_partition = files_per_partition

    def plan(self, request: PlanRequest) -> ExecutionPlan:
        planned = [self._plan_task(i, task, request) for i, task in enumerate(request.tasks)]
        order = [
            (task.position, part.index)
            for task in sorted(planned, key=lambda t: (-t.priority, t.position))
            for part in task.partitions
        ]
        return ExecutionPlan(tasks=planned, dispatch_order=order)

    def _plan_task(self, position: int, task: TaskDefinition, request: PlanRequest) -> PlannedTask:
        container_type = pick_container_type(task.container_tag, request.container_types)
        base = PlannedTask(position=position, name=task.name, container_type=None, priority=task.priority)
        if container_type is None:
            return base.model_copy(update={"reason": f"no container type has tags {task.container_tag}"})
        base.container_type = container_type.name
        unchanged = unchanged_reason(task, request.changed_paths)
        if unchanged:
            return base.model_copy(update={"skipped": True, "reason": unchanged})
        count = self._partition_count(task)
        chunks = split_evenly(task.files, count)
        base.partitions = [PlannedPartition(index=i + 1, files=files) for i, files in enumerate(chunks)]
        return base

    def _partition_count(self, task: TaskDefinition) -> int:
        if task.partitions:
            return task.partitions
        per = task.files_per_partition or self.files_per_partition
        return min(task.max_partitions, max(1, math.ceil(len(task.files) / per)))


def pick_container_type(tags: list[str], types: list[ContainerType]) -> ContainerType | None:
    """The first configured type carrying every requested tag."""
    wanted = set(tags)
    return next((t for t in types if wanted <= set(t.tags) or wanted == {t.name}), None)


def unchanged_reason(task: TaskDefinition, changed_paths: list[str] | None) -> str | None:
    if task.paths is None or changed_paths is None:
        return None
    if any(fnmatchcase(path, pattern) for path in changed_paths for pattern in task.paths):
        return None
    return f"none of the {len(changed_paths)} changed paths match the task's paths {task.paths}"


def split_evenly(files: list[str], count: int) -> list[list[str]]:
    """Contiguous chunks whose sizes differ by at most one; never an empty chunk unless no files."""
    if not files:
        return [[]]
    count = max(1, min(count, len(files)))
    size, extra = divmod(len(files), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(files[start:end])
        start = end
    return chunks
