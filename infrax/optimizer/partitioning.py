"""Splitting weighted files into partitions: the pure algorithm, no I/O.

The goal is the classic one of multiway number partitioning: make the longest partition as
short as possible. The lower bound of that is `max(total / count, longest file)`.

- Fresh plan: longest-processing-time-first (LPT) onto the least loaded partition, then a local
  search that repeatedly takes the longest partition and moves one file to, or swaps one file
  with, a shorter partition so that the pair ends up as even as possible. Small inputs that are
  still above the lower bound are finished by an exact branch and bound with a node budget.
- Sticky plan (a previous assignment is known): every file keeps its previous partition, new
  files go LPT onto the least loaded one, then files are moved out of the partitions that are too
  long (one move that fixes the excess, else one swap that does, else the largest file that
  fits) until the longest is within `tolerance` of the lower bound, or of the fresh plan when the
  bound is out of reach. If that repair fails, or moves more than FEW_MOVES of the files, the
  fresh plan renumbered to overlap the previous partitions, with files moved back where they ran
  while the target allows (`_return_home`), competes with it; the one moving fewer files wins,
  and a small input whose winner still moves many is solved exactly (`exact.fewest_moves`).

Everything is deterministic: ties are broken by the files' order in the input, never by hash
seeds, clocks or time budgets. Partition numbers are 1-based.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from infrax.optimizer.exact import fewest_moves

EPS = 1e-9  # seconds: differences below this are ties
STOP_REL = 1e-6  # a plan this close to the lower bound cannot usefully be improved
EXACT_MAX_FILES = 20  # branch and bound is only tried on inputs this small ...
EXACT_NODE_BUDGET = 200_000  # ... and stops after this many nodes, keeping the best found
SWAP_PARTNERS = 4  # the emptiest partitions a repair looks at for a swap ...
SWAP_CANDIDATES = 64  # ... with this many of the largest files of the overfull one
SEARCH_BUDGET = 200_000  # files looked at by the local search, so a bad case stays well under a second
FEW_MOVES = 0.02  # a repair that moves at most this share of the files is not compared with another plan


@dataclass
class Partitioning:
    """Files per partition (`parts[i]` is partition i + 1), in the input's order."""

    parts: list[list[str]]
    loads: list[float]
    lower_bound: float
    method: str
    kept: int = 0  # files that stayed in their previous partition
    moved: int = 0  # files with a valid previous partition that changed it
    notes: list[str] = field(default_factory=list)

    @property
    def makespan(self) -> float:
        return max(self.loads, default=0.0)

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound if self.lower_bound > 0 else 1.0


def lower_bound(durations: Sequence[float], count: int) -> float:
    if not durations:
        return 0.0
    return max(sum(durations) / max(1, count), max(durations))


def partition(
    items: Sequence[tuple[str, float]],
    count: int,
    previous: Mapping[str, int] | None = None,
    *,
    tolerance: float = 0.01,
) -> Partitioning:
    """Split `items` (file, seconds; distinct names) into `min(count, len(items))` partitions.

    `previous` maps a file to the 1-based partition it ran in last time (with the same count);
    indexes outside 1..count are ignored. `tolerance` is how much longer than the lower bound
    (or than the fresh plan, when that is longer still) the longest partition may be when that
    keeps files where they were.
    """
    names = [name for name, _ in items]
    sizes = [float(seconds) for _, seconds in items]
    n = len(names)
    if n == 0:
        return Partitioning([[]], [0.0], 0.0, "no files")
    if min(sizes) < 0:
        sizes = [max(0.0, size) for size in sizes]
    count = max(1, min(count, n))
    bound = lower_bound(sizes, count)
    homes: list[int] = []
    if previous:
        homes = [previous.get(name, 0) - 1 for name in names]
        homes = [h if 0 <= h < count else -1 for h in homes]
    if not homes or all(h < 0 for h in homes):
        fresh, method = _fresh(sizes, count, bound)
        return _result(names, sizes, _canonical(fresh), bound, method, homes)
    sticky = _sticky(sizes, count, homes, bound * (1 + tolerance) + EPS)
    kept_how = f"kept in place, within {tolerance:.1%} of the lower bound"
    known = sum(1 for h in homes if h >= 0)
    if sticky is not None and _moves(sticky, homes) <= max(1, known * FEW_MOVES):
        return _result(names, sizes, sticky, bound, kept_how, homes)
    fresh, method = _fresh(sizes, count, bound)
    target = max(_loads(fresh, sizes)) * (1 + tolerance) + EPS
    if sticky is None and target > bound * (1 + tolerance) + 2 * EPS:
        # The bound was out of reach: measured against the fresh plan instead.
        sticky = _sticky(sizes, count, homes, target)
        kept_how = f"kept in place, within {tolerance:.1%} of {method}"
    target = max(target, bound * (1 + tolerance) + EPS)
    # The other way to the same balance: the fresh plan, with files moved back where they ran. The
    # one that moves fewer files wins; a repair that moves many is often beaten by it.
    homebound = _return_home(_match(fresh, homes, count), sizes, homes, target)
    if sticky is not None and _moves(sticky, homes) <= _moves(homebound, homes):
        best, how = sticky, kept_how
    else:
        best, how = (
            homebound,
            f"{method}, renumbered to overlap the previous partitions, files moved back where they ran",
        )
    if _moves(best, homes) > max(1, known * FEW_MOVES):
        exact = fewest_moves(sizes, count, homes, target, best)
        if exact is not None and _moves(exact, homes) < _moves(best, homes):
            best, how = exact, f"fewest files moved within {tolerance:.1%} (exact, HiGHS)"
    note = None if sticky is not None else f"keeping files in place could not get within {tolerance:.1%}"
    return _result(names, sizes, best, bound, how, homes, note=note)


def _moves(bins: list[list[int]], homes: list[int]) -> int:
    """Files with a previous partition that are in another one."""
    return sum(1 for b, members in enumerate(bins) for i in members if homes[i] >= 0 and homes[i] != b)


def split_evenly(files: Sequence[str], count: int) -> list[list[str]]:
    """Contiguous chunks whose sizes differ by at most one (naive chunking); [[]] for no files."""
    if not files:
        return [[]]
    count = max(1, min(count, len(files)))
    size, extra = divmod(len(files), count)
    chunks, start = [], 0
    for i in range(count):
        end = start + size + (1 if i < extra else 0)
        chunks.append(list(files[start:end]))
        start = end
    return chunks


# -- fresh plans ---------------------------------------------------------------------------


def _fresh(sizes: list[float], count: int, bound: float) -> tuple[list[list[int]], str]:
    n = len(sizes)
    if max(sizes) - min(sizes) <= EPS:
        # Nothing tells the files apart (e.g. no history): contiguous chunks keep neighbours together.
        return _contiguous(n, count), "equal durations: contiguous chunks"
    order = sorted(range(n), key=sizes.__getitem__, reverse=True)  # stable: ties keep the input's order
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0.0] * count
    _place(bins, loads, order, sizes)
    method = "LPT"
    if max(loads) > bound * (1 + STOP_REL) + EPS:
        if _improve(bins, sizes, bound):
            method = "LPT + local search"
        if n <= EXACT_MAX_FILES and max(_loads(bins, sizes)) > bound * (1 + STOP_REL) + EPS:
            exact = _branch_and_bound(sizes, count, max(_loads(bins, sizes)), bound)
            if exact is not None:
                bins, method = exact, "branch and bound"
    _fill_empty(bins, sizes)
    return bins, method


def _place(bins: list[list[int]], loads: list[float], order: list[int], sizes: list[float]) -> None:
    """LPT: each file of `order` onto the least loaded partition (then the one with fewest files)."""
    heap = [(loads[b], len(bins[b]), b) for b in range(len(bins))]
    heapq.heapify(heap)
    replace = heapq.heapreplace
    for i in order:
        load, files, b = heap[0]
        bins[b].append(i)
        replace(heap, (load + sizes[i], files + 1, b))
    for load, _, b in heap:
        loads[b] = load


def _fill_empty(bins: list[list[int]], sizes: list[float]) -> None:
    """Give each empty partition the smallest file of the partition with the most files.

    That never lengthens the longest partition, and a requested count is then kept exactly.
    """
    for empty in [b for b in bins if not b]:
        donor = max(bins, key=len)
        if len(donor) < 2:
            return
        smallest = min(donor, key=lambda i: (sizes[i], -i))
        donor.remove(smallest)
        empty.append(smallest)


def _contiguous(n: int, count: int) -> list[list[int]]:
    size, extra = divmod(n, count)
    bins, start = [], 0
    for b in range(count):
        end = start + size + (1 if b < extra else 0)
        bins.append(list(range(start, end)))
        start = end
    return bins


def _improve(bins: list[list[int]], sizes: list[float], bound: float, max_steps: int | None = None) -> bool:
    """Local search: move or swap one file between the longest partition and a shorter one.

    Each step makes the longest of the pair strictly shorter, so the sorted loads decrease and the
    search ends; it also stops at the lower bound or after `max_steps`.
    """
    count = len(bins)
    loads = _loads(bins, sizes)
    # Per partition: sorted (size, file) so the best move or swap is found by bisection.
    sorted_bins = [sorted((sizes[i], i) for i in b) for b in bins]
    steps = work = 0
    limit = max_steps if max_steps is not None else 4 * len(sizes) + 100
    stop = bound * (1 + STOP_REL) + EPS
    while steps < limit and work < SEARCH_BUDGET:
        p = max(range(count), key=lambda b: (loads[b], -b))
        if loads[p] <= stop:
            break
        exchange = None
        for q in sorted(range(count), key=lambda b: (loads[b], b)):
            gap = loads[p] - loads[q]
            if gap <= EPS or work >= SEARCH_BUDGET:
                break
            work += len(sorted_bins[p])
            exchange = _best_exchange(sorted_bins[p], sorted_bins[q], gap)
            if exchange is not None:
                break
        if exchange is None:
            break
        x, y = exchange
        _apply_exchange(bins, sorted_bins, loads, sizes, p, q, x, y)
        steps += 1
    return steps > 0


def _best_exchange(
    source: list[tuple[float, int]], dest: list[tuple[float, int]], gap: float
) -> tuple[tuple[float, int], tuple[float, int] | None] | None:
    """The move (x, None) or swap (x, y) whose net shift is in (0, gap) and closest to gap / 2."""
    half = gap / 2
    best: tuple[float, tuple[float, int], tuple[float, int] | None] | None = None
    # Moves: x in (0, gap), closest to half.
    k = bisect_left(source, (half, -1))
    for j in (k - 1, k):
        if 0 <= j < len(source):
            x = source[j]
            if EPS < x[0] < gap - EPS:
                score = abs(x[0] - half)
                if best is None or score < best[0] - EPS:
                    best = (score, x, None)
    if best is not None and best[0] <= EPS:
        return best[1], best[2]
    # Swaps: x - y in (0, gap), closest to half, i.e. y closest to x - half.
    for x in source:
        want = x[0] - half
        k = bisect_left(dest, (want, -1))
        for j in (k - 1, k):
            if 0 <= j < len(dest):
                y = dest[j]
                shift = x[0] - y[0]
                if EPS < shift < gap - EPS:
                    score = abs(shift - half)
                    if best is None or score < best[0] - EPS:
                        best = (score, x, y)
        if best is not None and best[0] <= EPS:
            break
    return None if best is None else (best[1], best[2])


def _apply_exchange(
    bins: list[list[int]],
    sorted_bins: list[list[tuple[float, int]]],
    loads: list[float],
    sizes: list[float],
    p: int,
    q: int,
    x: tuple[float, int],
    y: tuple[float, int] | None,
) -> None:
    _move(bins, sorted_bins, loads, sizes, p, q, x)
    if y is not None:
        _move(bins, sorted_bins, loads, sizes, q, p, y)


def _move(
    bins: list[list[int]],
    sorted_bins: list[list[tuple[float, int]]],
    loads: list[float],
    sizes: list[float],
    src: int,
    dst: int,
    item: tuple[float, int],
) -> None:
    sorted_bins[src].pop(bisect_left(sorted_bins[src], item))
    insort(sorted_bins[dst], item)
    bins[src].remove(item[1])
    bins[dst].append(item[1])
    loads[src] -= sizes[item[1]]
    loads[dst] += sizes[item[1]]


def _branch_and_bound(sizes: list[float], count: int, best_known: float, bound: float) -> list[list[int]] | None:
    """The optimal split of a small input (or the best within the node budget), if it beats `best_known`."""
    order = sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))
    loads = [0.0] * count
    assignment = [0] * len(order)
    best: list[int] | None = None
    best_value = best_known - EPS
    nodes = 0

    def descend(k: int, current: float) -> bool:
        nonlocal best, best_value, nodes
        nodes += 1
        if nodes > EXACT_NODE_BUDGET:
            return True
        if k == len(order):
            best, best_value = list(assignment), current
            return current <= bound + EPS  # cannot do better than the lower bound: stop
        size = sizes[order[k]]
        tried: set[float] = set()
        for b in range(count):
            load = loads[b]
            if load in tried or load + size >= best_value:
                continue  # same load as a partition already tried: a symmetric branch
            tried.add(load)
            loads[b] = load + size
            assignment[k] = b
            done = descend(k + 1, max(current, load + size))
            loads[b] = load
            if done:
                return True
        return False

    descend(0, 0.0)
    if best is None:
        return None
    bins: list[list[int]] = [[] for _ in range(count)]
    for k, b in enumerate(best):
        bins[b].append(order[k])
    return bins


# -- sticky plans --------------------------------------------------------------------------


def _sticky(sizes: list[float], count: int, homes: list[int], target: float) -> list[list[int]] | None:
    """Keep files at home, place new ones LPT, then move the fewest files until every load <= target."""
    bins: list[list[int]] = [[] for _ in range(count)]
    loads = [0.0] * count
    new = []
    for i, home in enumerate(homes):
        if home >= 0:
            bins[home].append(i)
            loads[home] += sizes[i]
        else:
            new.append(i)
    new.sort(key=sizes.__getitem__, reverse=True)
    _place(bins, loads, new, sizes)
    # Sorted (size, file) lists, built only for the partitions a repair looks into.
    sorted_bins: list[list[tuple[float, int]] | None] = [None] * count
    free = set(new)  # new files, and files already moved: moving them (again) costs no churn
    for _ in range(len(sizes) + count):
        p = max(range(count), key=lambda b: (loads[b], -b))
        if loads[p] <= target:
            _fill_empty(bins, sizes)
            return bins
        receivers = sorted((b for b in range(count) if b != p), key=lambda b: (loads[b], b))[:SWAP_PARTNERS]
        if not receivers:
            return None
        source = _sorted_bin(sorted_bins, bins, sizes, p)
        excess = loads[p] - target
        q = receivers[0]
        moves = _fixing_move(source, excess, target - loads[q], free)
        if moves is None:
            for q in receivers:  # a swap that fixes p: two files move, but the big ones can stay
                moves = _fixing_swap(source, _sorted_bin(sorted_bins, bins, sizes, q), excess, target - loads[q])
                if moves is not None:
                    break
        if moves is None:
            q = receivers[0]
            moves = _progress_move(source, target - loads[q])
        if moves is None:
            return None
        x, y = moves
        _relocate(bins, sorted_bins, loads, p, q, x)
        free.add(x[1])
        if y is not None:
            _relocate(bins, sorted_bins, loads, q, p, y)
            free.add(y[1])
    return None


def _sorted_bin(
    sorted_bins: list[list[tuple[float, int]] | None], bins: list[list[int]], sizes: list[float], b: int
) -> list[tuple[float, int]]:
    found = sorted_bins[b]
    if found is None:
        found = sorted_bins[b] = sorted((sizes[i], i) for i in bins[b])
    return found


def _relocate(
    bins: list[list[int]],
    sorted_bins: list[list[tuple[float, int]] | None],
    loads: list[float],
    src: int,
    dst: int,
    item: tuple[float, int],
) -> None:
    if (source := sorted_bins[src]) is not None:
        source.pop(bisect_left(source, item))
    if (dest := sorted_bins[dst]) is not None:
        insort(dest, item)
    bins[src].remove(item[1])
    bins[dst].append(item[1])
    loads[src] -= item[0]
    loads[dst] += item[0]


Exchange = tuple[tuple[float, int], tuple[float, int] | None]


def _fixing_move(source: list[tuple[float, int]], excess: float, room: float, free: set[int]) -> Exchange | None:
    """A file whose move ends the excess without overfilling the receiver: a free one, else the smallest."""
    lo, hi = bisect_left(source, (excess, -1)), bisect_right(source, (room, math.inf))
    if lo >= hi:
        return None
    for j in range(lo, min(hi, lo + SWAP_CANDIDATES)):
        if source[j][1] in free:
            return source[j], None
    return source[lo], None


def _fixing_swap(
    source: list[tuple[float, int]], dest: list[tuple[float, int]], excess: float, room: float
) -> Exchange | None:
    """Files x (out of the overfull partition) and y (back into it) with excess <= x - y <= room."""
    if room < excess or not dest:
        return None
    for j in range(len(source) - 1, max(-1, len(source) - 1 - SWAP_CANDIDATES), -1):
        x = source[j]
        if x[0] - dest[0][0] < excess:
            break  # the smaller files cannot shift enough either
        k = bisect_left(dest, (x[0] - room, -1))
        if k < len(dest) and dest[k][0] <= x[0] - excess:
            return x, dest[k]
    return None


def _progress_move(source: list[tuple[float, int]], room: float) -> Exchange | None:
    """The largest file that fits the receiver: it shrinks the excess at least."""
    k = bisect_right(source, (room, math.inf))
    if k > 0 and source[k - 1][0] > EPS:
        return source[k - 1], None
    return None


def _match(bins: list[list[int]], homes: list[int], count: int) -> list[list[int]]:
    """Renumber partitions so that as many files as possible keep their previous number."""
    overlap: dict[tuple[int, int], int] = {}
    for b, members in enumerate(bins):
        for i in members:
            if homes[i] >= 0:
                overlap[(b, homes[i])] = overlap.get((b, homes[i]), 0) + 1
    result: list[list[int] | None] = [None] * count
    placed: set[int] = set()
    for (b, home), _ in sorted(overlap.items(), key=lambda kv: (-kv[1], kv[0])):
        if b not in placed and result[home] is None:
            result[home] = bins[b]
            placed.add(b)
    rest = iter(b for b in range(len(bins)) if b not in placed)
    return [slot if slot is not None else bins[next(rest)] for slot in result]


def _return_home(bins: list[list[int]], sizes: list[float], homes: list[int], target: float) -> list[list[int]]:
    """A balanced plan's files moved, or swapped, back to the partition they ran in last time,
    while no partition grows past `target`: the fresh plan's balance with as much of the previous
    plan's stability as that allows. Largest files first (each brings the most back), and a swap
    partner is first one that goes home too; bounded by SEARCH_BUDGET files looked at."""
    where = [0] * len(sizes)
    for b, members in enumerate(bins):
        for i in members:
            where[i] = b
    loads = _loads(bins, sizes)
    members = [len(b) for b in bins]  # a move never empties a partition
    # Per partition, its files that are away from home: the only ones worth swapping out.
    away: list[set[int]] = [set() for _ in bins]
    for i, home in enumerate(homes):
        if home >= 0 and where[i] != home:
            away[where[i]].add(i)
    order = sorted((i for b in away for i in b), key=lambda i: (sizes[i], i))
    budget = SEARCH_BUDGET

    def go(i: int, to: int) -> None:
        away[where[i]].discard(i)
        loads[where[i]] -= sizes[i]
        loads[to] += sizes[i]
        members[where[i]] -= 1
        members[to] += 1
        where[i] = to
        if homes[i] != to:
            away[to].add(i)

    for _ in range(3):  # a swap may make room for a file looked at before it
        moved = False
        for i in order:
            source, home = where[i], homes[i]
            if source == home:
                continue
            if loads[home] + sizes[i] <= target and members[source] > 1:
                go(i, home)
                moved = True
                continue
            low, high = loads[home] + sizes[i] - target, target - loads[source] + sizes[i]
            partner = None
            for g in sorted(away[home]):
                budget -= 1
                if low <= sizes[g] <= high:
                    partner = g
                    if homes[g] == source:
                        break
            if budget <= 0:
                break
            if partner is not None:
                go(i, home)
                go(partner, source)
                moved = True
        if not moved or budget <= 0:
            break
    result: list[list[int]] = [[] for _ in bins]
    for i, b in enumerate(where):
        result[b].append(i)
    return result


# -- results -------------------------------------------------------------------------------


def _canonical(bins: list[list[int]]) -> list[list[int]]:
    """Number partitions by their first file in the input's order; empty ones last."""
    full = sorted((b for b in bins if b), key=min)
    return full + [[] for b in bins if not b]


def _loads(bins: list[list[int]], sizes: list[float]) -> list[float]:
    return [math.fsum([sizes[i] for i in b]) for b in bins]


def _result(
    names: list[str],
    sizes: list[float],
    bins: list[list[int]],
    bound: float,
    method: str,
    homes: list[int],
    note: str | None = None,
) -> Partitioning:
    bins = [b for b in bins if b] or [[]]
    where = [0] * len(names)
    for b, members in enumerate(bins):
        for i in members:
            where[i] = b
    parts: list[list[str]] = [[] for _ in bins]
    for i, name in enumerate(names):  # each partition's files in the input's order
        parts[where[i]].append(name)
    kept = sum(1 for i, home in enumerate(homes) if home >= 0 and home == where[i])
    moved = sum(1 for home in homes if home >= 0) - kept
    return Partitioning(
        parts=parts,
        loads=_loads(bins, sizes),
        lower_bound=bound,
        method=method,
        kept=kept,
        moved=moved,
        notes=[note] if note else [],
    )
