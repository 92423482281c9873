"""Task graphs: a task of a request may depend on others of the same request (`dependsOn`) and
fetch their artifacts (`fetches`). What a submission must satisfy is checked here, so every way in
(the scheduler's REST API, `.infrax.yml`) refuses the same graphs with the same words."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from graphlib import CycleError, TopologicalSorter
from typing import TYPE_CHECKING

from infrax.artifacts.base import InvalidArtifactName, check_name

if TYPE_CHECKING:
    from infrax.model import TaskDefinition


def check_graph(tasks: Sequence[TaskDefinition]) -> None:
    """ValueError naming the first unknown dependency, ambiguous name, fetch from a task not
    depended on, bad artifact name or cycle."""
    names = Counter(t.name for t in tasks)
    if not any(t.depends_on or t.fetches for t in tasks):
        return
    for i, task in enumerate(tasks):
        for name in task.depends_on:
            if name not in names:
                known = ", ".join(sorted(names)[:20])
                raise ValueError(
                    f"tasks.{i}.dependsOn: task {task.name!r} depends on {name!r}, which is not a task of "
                    f"this request (its tasks: {known})"
                )
            if names[name] > 1:
                raise ValueError(f"tasks.{i}.dependsOn: {name!r} names {names[name]} tasks of this request, not one")
            if name == task.name:
                raise ValueError(f"tasks.{i}.dependsOn: task {task.name!r} depends on itself")
        for j, fetch in enumerate(task.fetches):
            if fetch.task not in task.depends_on:
                raise ValueError(
                    f"tasks.{i}.fetches.{j}: task {task.name!r} fetches from {fetch.task!r}, which is not in its "
                    "dependsOn"
                )
            try:
                check_name("fetch", fetch.artifact)
            except InvalidArtifactName as error:
                raise ValueError(f"tasks.{i}.fetches.{j}.artifact: {error}") from None
    try:
        TopologicalSorter({t.name: t.depends_on for t in tasks}).prepare()
    except CycleError as error:
        cycle = error.args[1]
        raise ValueError(f"dependsOn: the tasks form a cycle: {' → '.join(reversed(cycle))}") from None
