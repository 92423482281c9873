"""The fewest files moved that keep every partition within a target: an exact answer, for inputs
small enough to get one quickly.

A suite of fifty files that lost its one long file must move a handful of files to stay balanced;
which handful decides whether its churn is 14 % or 24 %, and the greedy repairs in
`partitioning.py` do not always find the smallest. This is a 0-1 program (each file in exactly one
partition, each partition's seconds at most the target, a cost of 1 for each file away from where
it ran last), solved by HiGHS, starting from the greedy plan so that it is never worse. HiGHS runs
without Python's GIL: planned in a thread, it holds up nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

MAX_VARIABLES = 6_000  # files x partitions: beyond this the greedy plan stands
MAX_NODES = 20_000  # branch-and-bound nodes: the same answer on every machine, unlike a time limit
TIME_LIMIT = 2.0  # seconds, a safety net only
FEASIBLE = 2  # HiGHS's kSolutionStatusFeasible

_quiet_lock = threading.Lock()
_constructed = False


def fewest_moves(
    sizes: list[float], count: int, homes: list[int], target: float, start: list[list[int]]
) -> list[list[int]] | None:
    """Partitions (lists of file indexes) within `target` with the fewest files away from `homes`
    (-1: a file with no previous partition, free to go anywhere); None when the input is too
    large, HiGHS is not installed, or it found nothing better than `start`."""
    n = len(sizes)
    if n * count > MAX_VARIABLES or count < 2 or n < count:
        return None
    try:
        import highspy
        import numpy as np
    except ImportError:  # an optional speed-up of stability: the greedy plan stands without it
        return None
    highs = _new_highs(highspy)
    for option, value in (
        ("output_flag", False),
        ("threads", 1),
        ("random_seed", 0),
        ("mip_max_nodes", MAX_NODES),
        ("time_limit", TIME_LIMIT),
    ):
        highs.setOptionValue(option, value)
    # Column i * count + p: file i in partition p.
    columns = n * count
    costs = np.ones(columns)
    for i, home in enumerate(homes):
        if home < 0:
            costs[i * count : (i + 1) * count] = 0.0
        else:
            costs[i * count + home] = 0.0
    highs.addVars(columns, np.zeros(columns), np.ones(columns))
    highs.changeColsCost(columns, np.arange(columns, dtype=np.int32), costs)
    integer = np.full(columns, int(highspy.HighsVarType.kInteger), dtype=np.uint8)
    highs.changeColsIntegrality(columns, np.arange(columns, dtype=np.int32), integer)
    # Each file in exactly one partition.
    starts = np.arange(0, columns, count, dtype=np.int32)
    highs.addRows(n, np.ones(n), np.ones(n), columns, starts, np.arange(columns, dtype=np.int32), np.ones(columns))
    # Each partition within the target, and none empty.
    index = np.array([i * count + p for p in range(count) for i in range(n)], dtype=np.int32)
    values = np.array([sizes[i] for p in range(count) for i in range(n)])
    starts = np.arange(0, columns, n, dtype=np.int32)
    highs.addRows(count, np.zeros(count), np.full(count, target), columns, starts, index, values)
    highs.addRows(count, np.ones(count), np.full(count, float(n)), columns, starts, index, np.ones(columns))
    begun = [i * count + p for p, members in enumerate(start) for i in members]
    highs.setSolution(len(begun), np.array(begun, dtype=np.int32), np.ones(len(begun)))
    highs.run()
    if highs.getInfo().primal_solution_status != FEASIBLE:
        return None
    chosen = highs.getSolution().col_value
    bins: list[list[int]] = [[] for _ in range(count)]
    for i in range(n):
        row = chosen[i * count : (i + 1) * count]
        bins[max(range(count), key=row.__getitem__)].append(i)
    return bins


def _new_highs(highspy: Any) -> Any:
    """A solver object. HiGHS writes a banner to standard output the first time one is made in a
    process; that first one is made with standard output pointed at /dev/null, so a server's
    output stays its own log lines."""
    global _constructed
    with _quiet_lock:
        if _constructed:
            return highspy.Highs()
        with _stdout_silenced():
            made = highspy.Highs()
        _constructed = True
        return made


@contextlib.contextmanager
def _stdout_silenced() -> Iterator[None]:
    try:
        saved = os.dup(1)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as sink:
            os.dup2(sink.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)
