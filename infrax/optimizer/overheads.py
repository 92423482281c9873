"""What a partition of a task costs besides its files, learned per project, task and container type.

Two parts, each from the runs that measure it:

- **checkout**: the seconds the agent reports it took to check the revision out (`checkoutSeconds`);
- **start**: what is left of a run's duration once the checkout and every file's reported seconds
  are taken off (the runner's own start: an interpreter, test collection, fixtures). Only a run whose
  bootstrapper reported every one of its files says this; otherwise the files share it.

Each is the mean of its first samples, then a moving average (`ALPHA`), as a file's estimate is. The
planner adds both to the container type's `overhead` (its own start, set by hand) wherever it weighs
a partition: the partition count for `targetWallTime`, the expected wall time, the dispatch order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.model import WireModel
from infrax.store import aware
from infrax.store.tables import overheads
from infrax.store.upsert import upsert

if TYPE_CHECKING:
    from infrax.optimizer.history import HistoryKey, Sample

ALPHA = 0.3
RECENT_RUNS = 8


class Overhead(NamedTuple):
    checkout: float = 0.0
    checkout_samples: int = 0
    start: float = 0.0
    start_samples: int = 0

    @property
    def seconds(self) -> float:
        return self.checkout + self.start

    def describe(self) -> str:
        parts = []
        if self.checkout_samples:
            parts.append(f"checkout {self.checkout:.1f} s over {self.checkout_samples} run(s)")
        if self.start_samples:
            parts.append(f"start {self.start:.1f} s over {self.start_samples} run(s)")
        return ", ".join(parts) or "nothing yet"


Overheads = Mapping["HistoryKey", Overhead]


class LearnedOverhead(WireModel):
    """One task's learned overhead on one container type, as `GET /api/v1/overheads` shows it."""

    project: str
    task_name: str
    container_type: str
    checkout: float = Field(description="seconds: the moving average of its runs' checkouts")
    checkout_samples: int
    start: float = Field(description="seconds of a run that neither its checkout nor its files' reported times cover")
    start_samples: int
    updated_at: datetime


async def rows(conn: AsyncConnection, project: str, task_name: str) -> list[LearnedOverhead]:
    t = overheads
    found = await conn.execute(
        select(t).where(t.c.project == project, t.c.task_name == task_name).order_by(t.c.container_type)
    )
    fields = set(LearnedOverhead.model_fields)
    return [
        LearnedOverhead.model_validate(
            {k: v for k, v in row.items() if k in fields} | {"updated_at": aware(row["updated_at"])}
        )
        for row in found.mappings().all()
    ]


async def load(conn: AsyncConnection, project: str, keys: Iterable[HistoryKey]) -> dict[HistoryKey, Overhead]:
    wanted = set(keys)
    if not wanted:
        return {}
    t = overheads
    rows = await conn.execute(
        select(
            t.c.task_name, t.c.container_type, t.c.checkout, t.c.checkout_samples, t.c.start, t.c.start_samples
        ).where(t.c.project == project, t.c.task_name.in_(sorted({name for name, _ in wanted})))
    )
    found = {}
    for task_name, container_type, checkout, checkout_samples, start, start_samples in rows.all():
        if (task_name, container_type) in wanted:
            found[(task_name, container_type)] = Overhead(checkout, checkout_samples, start, start_samples)
    return found


def start_of(sample: Sample) -> float | None:
    """Seconds of the run that its checkout and its files' reported times leave over, when it says."""
    reported = sample.file_durations or {}
    if sample.duration is None or not sample.files or any(f not in reported for f in sample.files):
        return None
    accounted = (sample.checkout_seconds or 0.0) + sum(max(0.0, float(reported[f])) for f in set(sample.files))
    return max(0.0, sample.duration - accounted)


async def record(conn: AsyncConnection, samples: list[Sample], now: datetime) -> dict[tuple[str, str, str], Overhead]:
    """Fold the runs into their rows (one read and one upsert per task and container type); the
    overheads as they were before, which the files' share of each run is reckoned with."""
    prefixes = {(s.project, s.task_name, s.container_type) for s in samples}
    t = overheads
    rows: dict[tuple[str, str, str], dict[str, Any]] = {}
    for project, task_name, container_type in prefixes:
        found = await conn.execute(
            select(t).where(t.c.project == project, t.c.task_name == task_name, t.c.container_type == container_type)
        )
        stored = found.mappings().first()
        if stored is not None:
            rows[(project, task_name, container_type)] = dict(stored)
    before = {key: _overhead(row) for key, row in rows.items()}
    changed = set()
    for sample in samples:
        key = (sample.project, sample.task_name, sample.container_type)
        start = start_of(sample)
        if sample.checkout_seconds is None and start is None:
            continue
        row = rows.setdefault(
            key,
            {
                "project": sample.project,
                "task_name": sample.task_name,
                "container_type": sample.container_type,
                "checkout": 0.0,
                "checkout_samples": 0,
                "start": 0.0,
                "start_samples": 0,
                "recent_runs": [],
            },
        )
        recent = list(row["recent_runs"] or [])
        if sample.run_id in recent:
            continue
        if sample.checkout_seconds is not None:
            _fold(row, "checkout", max(0.0, sample.checkout_seconds))
        if start is not None:
            _fold(row, "start", start)
        row["recent_runs"] = (recent + [sample.run_id])[-RECENT_RUNS:]
        row["updated_at"] = now
        changed.add(key)
    for key in changed:
        await upsert(conn, overheads, rows[key], ("project", "task_name", "container_type"))
    return before


def _fold(row: dict[str, Any], name: str, seconds: float) -> None:
    samples = row[f"{name}_samples"] + 1
    row[name] = row[name] + max(1 / samples, ALPHA) * (seconds - row[name])
    row[f"{name}_samples"] = samples


def _overhead(row: Mapping[str, Any]) -> Overhead:
    return Overhead(row["checkout"], row["checkout_samples"], row["start"], row["start_samples"])
