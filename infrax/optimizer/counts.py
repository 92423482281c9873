"""How many partitions a task gets when it leaves the count to the optimizer (`partitions: auto`,
the default): the count with the least expected wall time plus its overheads' share of the
container type.

A partition costs its overhead (the container's start, the checkout, the runner's own start-up:
`overhead` below, learned per task) however little it runs. Split k ways on a type of C
containers, a task of T seconds is expected to take `wall(k) = overhead + makespan(k)` for k ≤ C
(a count above C only queues partitions behind each other). More partitions always shorten
`wall`, by less each time, while each adds `overhead` of container time that the queue's next
work waits for: spread over the type's C containers, `k × overhead / C` of wall time. The count
minimising `wall(k) + k × overhead / C` is the one where one more partition would save less wall
time than it costs the queue. A suite long against its overhead gets every container; a short
one, or one whose runner takes long to start, gets fewer.
"""

from __future__ import annotations

from collections.abc import Sequence

from infrax.optimizer.partitioning import Partitioning, lower_bound, partition


def auto_count(
    files: Sequence[str], durations: Sequence[float], overhead: float, containers: int, max_count: int
) -> tuple[int, Partitioning, list[tuple[int, float]]]:
    """The count, its fresh partitioning, and each count tried with its cost (wall plus share)."""
    items = list(zip(files, durations, strict=True))
    cap = max(1, min(containers, max_count, len(items)))
    tried: list[tuple[int, float]] = []
    best: tuple[float, int, Partitioning] | None = None
    for count in range(1, cap + 1):
        floor = overhead + lower_bound(durations, count) + count * overhead / containers
        if best is not None and floor >= best[0]:
            continue  # even a perfect split of this many cannot beat the best so far
        result = partition(items, count)
        cost = overhead + result.makespan + count * overhead / containers
        tried.append((count, cost))
        if best is None or cost < best[0] * (1 - 1e-9):
            best = (cost, count, result)
    assert best is not None
    return best[1], best[2], tried
