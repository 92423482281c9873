"""Runtime history: how long each file takes, per project, task name, container type and file.

A finished partition run (completed or failed) is one sample for each of its files:

- files the bootstrapper reported in `$INFRAX_REPORT_DIR/durations.json` (the agent forwards it
  as the run's `fileDurations`) take the reported seconds;
- the other files share what is left of the run's duration (duration minus the reported
  seconds and the run's overhead: its measured checkout and the learned start of the task, see
  `infrax.optimizer.overheads`; nothing if that is not positive) in proportion to their current estimates, a file
  without one counting as the median of the others' estimates, or all equally when none has one.

A file's estimate is the median of its last RECENT_SAMPLES samples: one run on a loaded machine
(or two of five) does not move it, where a moving average took a third of every such run into
the estimate; until it has MEDIAN_FROM samples, their mean (a row from before kept the moving
average it had, and goes over to the median as samples come). A sample OUTLIER times off the
estimate is held, not taken, until the next run agrees (`_confirmed`): with two samples, one bad
run would otherwise be half the mean. Each row remembers the last runs
it took, so a redelivered message changes nothing, and the partition the file last ran in, so
plans can keep it there.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import and_, bindparam, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.model import WireModel, utcnow
from infrax.optimizer import overheads
from infrax.optimizer.overheads import LearnedOverhead, Overhead
from infrax.store import Conflict, Database, aware
from infrax.store.tables import file_durations

ALPHA = 0.3  # weight of a new sample in a row that has no recent samples yet (one from before 0015)
RECENT_SAMPLES = 5  # samples kept per file; the estimate is their median ...
MEDIAN_FROM = 3  # ... once there are this many (before, their mean)
RECENT_RUNS = 8  # run ids kept per file to recognise redeliveries
OUTLIER = 3.0  # a sample this many times off its file's estimate waits for a second run to agree
_CHUNK = 500  # files per IN (...) clause: well under SQLite's variable limit


class FileHistory(NamedTuple):
    """What the optimizer knows of one file of one task on one container type."""

    estimate: float
    samples: int
    last_index: int | None = None  # the 1-based partition it last ran in ...
    last_count: int | None = None  # ... out of this many


HistoryKey = tuple[str, str]  # (task name, container type)
History = Mapping[HistoryKey, Mapping[str, FileHistory]]


@dataclass(frozen=True)
class Sample:
    """One finished run of one partition, as the optimizer learns from it."""

    project: str
    task_name: str
    container_type: str
    run_id: str
    files: list[str]
    index: int
    count: int
    duration: float | None
    file_durations: dict[str, float] | None = None
    checkout_seconds: float | None = None


class FileRuntime(WireModel):
    """One row of history, as `GET /api/v1/history` shows it."""

    project: str
    task_name: str
    container_type: str
    file: str
    estimate: float
    samples: int
    last_duration: float
    partition_index: int | None
    partition_count: int | None
    updated_at: datetime


def spread(
    files: list[str],
    duration: float | None,
    reported: Mapping[str, float] | None,
    estimates: Mapping[str, float],
    overhead: float = 0.0,
) -> dict[str, float]:
    """Seconds per file of one run, by the rule in this module's docstring."""
    reported = reported or {}
    samples = {f: max(0.0, float(reported[f])) for f in files if f in reported}
    rest = [f for f in files if f not in samples]
    if not rest or duration is None:
        return samples
    left = duration - overhead - sum(samples.values())
    if left <= 0:
        return samples
    known = [estimates[f] for f in rest if f in estimates and estimates[f] > 0]
    fallback = statistics.median(known) if known else 1.0
    weights = {f: estimates[f] if estimates.get(f, 0) > 0 else fallback for f in rest}
    total = sum(weights.values())
    for f in rest:
        samples[f] = left * weights[f] / total
    return samples


class RuntimeHistory:
    """The `optimizer_file_durations` table: read at planning, written from finished runs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def load(self, project: str, keys: Iterable[HistoryKey]) -> dict[HistoryKey, dict[str, FileHistory]]:
        wanted = set(keys)
        found: dict[HistoryKey, dict[str, FileHistory]] = {key: {} for key in wanted}
        if not wanted:
            return found
        t = file_durations
        query = select(
            t.c.task_name,
            t.c.container_type,
            t.c.file,
            t.c.estimate,
            t.c.samples,
            t.c.partition_index,
            t.c.partition_count,
        ).where(t.c.project == project, t.c.task_name.in_(sorted({name for name, _ in wanted})))
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).all()
        for task_name, container_type, file, estimate, samples, index, count in rows:
            key = (task_name, container_type)
            if key in found:
                found[key][file] = FileHistory(estimate, samples, index, count)
        return found

    async def overheads(self, project: str, keys: Iterable[HistoryKey]) -> dict[HistoryKey, Overhead]:
        async with self.db.begin() as conn:
            return await overheads.load(conn, project, keys)

    async def overhead_rows(self, project: str, task_name: str) -> list[LearnedOverhead]:
        async with self.db.begin() as conn:
            return await overheads.rows(conn, project, task_name)

    async def rows(self, project: str, task_name: str, container_type: str | None = None) -> list[FileRuntime]:
        t = file_durations
        query = (
            select(t).where(t.c.project == project, t.c.task_name == task_name).order_by(t.c.container_type, t.c.file)
        )
        if container_type:
            query = query.where(t.c.container_type == container_type)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        fields = set(FileRuntime.model_fields)
        return [
            FileRuntime.model_validate(
                {k: v for k, v in row.items() if k in fields} | {"updated_at": aware(row["updated_at"])}
            )
            for row in rows
        ]

    async def record(self, samples: list[Sample]) -> int:
        """Apply finished runs in one transaction; returns how many file rows changed."""
        # Two optimizers may insert the same new file at once: the loser reads again and updates.
        return await self.db.retrying(lambda: self._record(samples), also=(Conflict,))

    async def _record(self, samples: list[Sample]) -> int:
        now = utcnow()
        async with self.db.begin() as conn:
            rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
            existing: set[tuple[str, str, str, str]] = set()
            await self._load_rows(conn, samples, rows, existing)
            learned = await overheads.record(conn, samples, now)
            changed: set[tuple[str, str, str, str]] = set()
            for sample in samples:
                changed |= _apply(
                    sample, rows, now, learned.get((sample.project, sample.task_name, sample.container_type))
                )
            inserts = [rows[key] for key in changed if key not in existing]
            updates = [{f"b_{k}": v for k, v in rows[key].items()} for key in changed if key in existing]
            if inserts:
                await conn.execute(insert(file_durations), inserts)
            if updates:
                t = file_durations
                key_matches = and_(*(t.c[c] == bindparam(f"b_{c}") for c in _KEY))
                await conn.execute(
                    update(t).where(key_matches).values({c: bindparam(f"b_{c}") for c in _MUTABLE}), updates
                )
        return len(changed)

    async def _load_rows(
        self,
        conn: AsyncConnection,
        samples: list[Sample],
        rows: dict[tuple[str, str, str, str], dict[str, Any]],
        existing: set[tuple[str, str, str, str]],
    ) -> None:
        """The stored rows of every file of `samples`: one query per task and container type, not per run."""
        t = file_durations
        wanted: dict[tuple[str, str, str], set[str]] = {}
        for sample in samples:
            wanted.setdefault((sample.project, sample.task_name, sample.container_type), set()).update(sample.files)
        for prefix, files in wanted.items():
            project, task_name, container_type = prefix
            names = sorted(files)
            for start in range(0, len(names), _CHUNK):
                chunk = names[start : start + _CHUNK]
                result = await conn.execute(
                    select(t).where(
                        t.c.project == project,
                        t.c.task_name == task_name,
                        t.c.container_type == container_type,
                        t.c.file.in_(chunk),
                    )
                )
                for row in result.mappings().all():
                    key = prefix + (row["file"],)
                    rows[key] = dict(row)
                    existing.add(key)


_KEY = ("project", "task_name", "container_type", "file")
_MUTABLE = (
    "estimate",
    "samples",
    "last_duration",
    "partition_index",
    "partition_count",
    "recent_runs",
    "recent_seconds",
    "held_seconds",
    "updated_at",
)


def _apply(
    sample: Sample, rows: dict[tuple[str, str, str, str], dict[str, Any]], now: datetime, learned: Overhead | None
) -> set[Any]:
    """Fold one run into the rows of its files (in memory); the keys of the rows it changed."""
    overhead = (sample.checkout_seconds or 0.0) + (learned.start if learned and learned.start_samples else 0.0)
    prefix = (sample.project, sample.task_name, sample.container_type)
    fresh = [f for f in dict.fromkeys(sample.files) if sample.run_id not in _runs(rows.get(prefix + (f,)))]
    estimates = {f: rows[prefix + (f,)]["estimate"] for f in fresh if prefix + (f,) in rows}
    changed = set()
    for f, seconds in spread(fresh, sample.duration, sample.file_durations, estimates, overhead).items():
        key = prefix + (f,)
        row = rows.get(key)
        if row is None:
            row = rows[key] = {
                "project": sample.project,
                "task_name": sample.task_name,
                "container_type": sample.container_type,
                "file": f,
                "estimate": seconds,
                "samples": 0,
                "recent_runs": [],
            }
        samples = row["samples"] + 1
        held, taken = _confirmed(row, seconds)
        recent = (list(row.get("recent_seconds") or []) + taken)[-RECENT_SAMPLES:]
        if not taken:  # an outlier waiting for a second run to agree: the estimate stays
            estimate = row["estimate"]
        elif len(recent) >= MEDIAN_FROM:
            estimate = statistics.median(recent)
        elif len(recent) == samples:
            estimate = statistics.fmean(recent)
        else:  # samples from before recent_seconds were kept: the moving average goes on until enough
            estimate = row["estimate"] + max(1 / samples, ALPHA) * (seconds - row["estimate"])
        row.update(
            estimate=estimate,
            recent_seconds=recent,
            held_seconds=held or None,
            samples=samples,
            last_duration=seconds,
            partition_index=sample.index,
            partition_count=sample.count,
            recent_runs=(_runs(row) + [sample.run_id])[-RECENT_RUNS:],
            updated_at=now,
        )
        changed.add(key)
    return changed


def _confirmed(row: dict[str, Any], seconds: float) -> tuple[list[float], list[float]]:
    """(samples held, samples taken into the estimate) after this one. A sample OUTLIER times
    slower or faster than the file's estimate is held until the next run agrees (off the same way):
    then both count; a run in line with the estimate drops it. One run on a starved machine (or a
    lucky one) so never moves a plan; a file that really became slower moves it on its second run."""
    if not row["samples"] or not row["estimate"] or row["estimate"] <= 0:
        return [], [seconds]
    ratio = seconds / row["estimate"]
    if 1 / OUTLIER <= ratio <= OUTLIER:
        return [], [seconds]
    held = [h for h in (row.get("held_seconds") or []) if (h > row["estimate"]) == (ratio > 1)]
    if held:
        return [], [*held, seconds]
    return [seconds], []


def _runs(row: dict[str, Any] | None) -> list[str]:
    return list(row["recent_runs"] or []) if row is not None else []
