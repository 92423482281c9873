"""Brute force for the tests: the best possible split, by trying every set partition."""

from __future__ import annotations


def optimum_by_count(sizes: list[float]) -> dict[int, float]:
    """For each k in 1..len(sizes), the shortest possible longest partition with at most k partitions."""
    best: dict[int, float] = {}

    def grow(i: int, loads: list[float]) -> None:
        if i == len(sizes):
            best[len(loads)] = min(best.get(len(loads), float("inf")), max(loads))
            return
        for b in range(len(loads)):
            loads[b] += sizes[i]
            grow(i + 1, loads)
            loads[b] -= sizes[i]
        grow(i + 1, loads + [sizes[i]])

    grow(0, [])
    return {k: min(v for j, v in best.items() if j <= k) for k in range(1, len(sizes) + 1)}
