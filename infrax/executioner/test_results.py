"""Results per test: read from the JUnit reports a run left among its artifacts (`reports/*.xml`),
kept per run, and served per partition, task, job, and per test across jobs.

A run's results are stored before its end is: whoever sees a run ended can read its tests."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from pydantic import Field
from sqlalchemy import delete, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.artifacts import ArtifactNotFound, ArtifactStore
from infrax.model import PartitionOffer, WireModel, utcnow
from infrax.pagination import PageRequest, keyset, split
from infrax.store import Database
from infrax.store.tables import test_results
from infrax.test_reports import (
    FAILING,
    MAX_REPORT_BYTES,
    MAX_TESTS,
    ReportError,
    TestResult,
    is_report,
    parse_junit,
)

log = logging.getLogger(__name__)

_BATCH = 500
# How far back a failed test's history is read to find the push that broke it.
REGRESSION_WINDOW = timedelta(days=30)


class TestResultView(WireModel):
    """One test case of one run, as its report gave it."""

    run_id: str
    partition_id: str
    run: int
    task_id: str
    task_name: str
    job_id: str | None
    project: str
    test_id: str = Field(description="pytest's node id where the report allows it: `file::Class::name`")
    file: str | None
    outcome: str = Field(description="passed | failed | error | skipped")
    duration: float
    message: str | None
    recorded_at: datetime
    seq: int = Field(description="the case's place in the run's reports")


class RunOutcome(WireModel):
    run: int
    outcome: str
    duration: float
    message: str | None = None


class Regression(WireModel):
    """Where a test began failing every time: the first of its latest failing runs after a pass."""

    job_id: str | None
    partition_id: str
    since: datetime


class TestVerdict(WireModel):
    """One test of one partition over all its runs: `failed` when it failed on every run it ran in,
    `intermittent` when it failed and then passed, else `passed` (or `skipped`); the runs are the
    evidence."""

    partition_id: str
    task_name: str
    test_id: str
    file: str | None
    verdict: str = Field(description="passed | failed | intermittent | skipped")
    runs: list[RunOutcome]
    regression: Regression | None = Field(
        default=None,
        description="a failed test that passed before: the partition since which it has failed every time "
        "(its job the push that broke it; this partition's own when this push did)",
    )


def verdict_of(outcomes: Sequence[str]) -> str:
    """From a test's outcomes, run by run."""
    failed = [o in FAILING for o in outcomes]
    if all(failed):
        return "failed"
    if any(failed):
        return "intermittent" if not failed[-1] else "failed"
    return "skipped" if all(o == "skipped" for o in outcomes) else "passed"


class TestHistory(WireModel):
    """One test of a project over a window: how often it ran, failed, and was intermittent."""

    test_id: str
    file: str | None
    runs: int = Field(description="runs of it (a re-run counts again)")
    failures: int = Field(description="of those runs, how many failed")
    partitions: int = Field(description="partitions it ran in (each job's chunk once, re-runs and all)")
    failed: int = Field(description="of those, how many it failed on every run")
    intermittent: int = Field(description="of those, how many it failed and then passed")
    last_verdict: str
    regression: Regression | None = Field(
        default=None, description="it failed every time since this partition, and had passed before it"
    )


def history_of(test_id: str, rows: Sequence[Any]) -> TestHistory:
    """A test's history from its results, oldest first."""
    by_partition: dict[str, list[Any]] = {}
    for row in rows:
        by_partition.setdefault(row.partition_id, []).append(row)
    occurrences = sorted(by_partition.values(), key=lambda runs: runs[0].recorded_at)
    verdicts = [verdict_of([r.outcome for r in sorted(runs, key=lambda r: (r.run, r.seq))]) for runs in occurrences]
    regression = None
    streak = len(verdicts)
    while streak > 0 and verdicts[streak - 1] == "failed":
        streak -= 1
    if streak < len(verdicts) and any(v in ("passed", "intermittent") for v in verdicts[:streak]):
        first = occurrences[streak][0]
        regression = Regression(job_id=first.job_id, partition_id=first.partition_id, since=first.recorded_at)
    return TestHistory(
        test_id=test_id,
        file=rows[-1].file,
        runs=len(rows),
        failures=sum(r.outcome in FAILING for r in rows),
        partitions=len(occurrences),
        failed=verdicts.count("failed"),
        intermittent=verdicts.count("intermittent"),
        last_verdict=verdicts[-1],
        regression=regression,
    )


class TestResults:
    def __init__(self, db: Database, store: ArtifactStore) -> None:
        self.db = db
        self.store = store

    async def read_reports(
        self, run_id: str, names: Sequence[str], files: Sequence[str], note: Callable[[str], object]
    ) -> list[TestResult] | None:
        """Every test case of the run's kept reports; None when it kept none."""
        reports = sorted(n for n in names if is_report(n))
        if not reports:
            return None
        results: list[TestResult] = []
        for name in reports:
            try:
                data = await self._bytes(run_id, name)
                found = parse_junit(data, files)
            except (ReportError, ArtifactNotFound) as error:
                note(f"test report {name} not read: {error}")
                continue
            results += found[: MAX_TESTS - len(results)]
        note(f"{len(results)} test results from {len(reports)} reports")
        return results

    async def _bytes(self, run_id: str, name: str) -> bytes:
        artifact = await self.store.get(run_id, name)
        if artifact.size > MAX_REPORT_BYTES:
            raise ReportError(f"larger than {MAX_REPORT_BYTES >> 20} MB")
        return b"".join([chunk async for chunk in self.store.read(run_id, name)])

    async def record(self, offer: PartitionOffer, results: Sequence[TestResult]) -> None:
        """The run's results, in place of any an earlier try of this executioner stored for it."""
        now = utcnow()
        rows = [
            {
                "run_id": offer.run_id,
                "seq": seq,
                "partition_id": offer.partition_id,
                "run": offer.run,
                "task_id": offer.task_id,
                "task_name": offer.task_name,
                "job_id": offer.job_id,
                "project": offer.project,
                "test_id": r.test_id,
                "file": r.file,
                "outcome": r.outcome,
                "duration": r.duration,
                "message": r.message,
                "recorded_at": now,
            }
            for seq, r in enumerate(results)
        ]
        async with self.db.begin() as conn:
            await conn.execute(delete(test_results).where(test_results.c.run_id == offer.run_id))
            for start in range(0, len(rows), _BATCH):
                await conn.execute(insert(test_results), rows[start : start + _BATCH])

    async def query(
        self,
        page: PageRequest,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        partition_id: str | None = None,
        run_id: str | None = None,
        project: str | None = None,
        test_id: str | None = None,
        outcome: str | None = None,
    ) -> list[dict[str, Any]]:
        """One page of results (a row more, for the next page's cursor), by run and place; a test's
        across jobs (`project` and `test_id`) newest first."""
        t = test_results.c
        query = select(test_results)
        for column, value in (
            (t.job_id, job_id),
            (t.task_id, task_id),
            (t.partition_id, partition_id),
            (t.run_id, run_id),
            (t.project, project),
            (t.test_id, test_id),
            (t.outcome, outcome),
        ):
            if value is not None:
                query = query.where(column == value)
        if test_id is not None and job_id is None and task_id is None and partition_id is None:
            query = keyset(query, page, [t.recorded_at, t.run_id, t.seq], descending=True, parse=_time_run_seq)
        else:
            query = keyset(query, page, [t.run_id, t.seq], parse=lambda key: [str(key[0]), int(key[1])])
        async with self.db.reading() as conn:
            return [dict(row) for row in (await conn.execute(query)).mappings().all()]

    async def verdicts(
        self,
        page: PageRequest,
        *,
        job_id: str | None = None,
        task_id: str | None = None,
        partition_id: str | None = None,
    ) -> tuple[list[TestVerdict], list[Any] | None]:
        """A page of tests (by partition, then test id), each with its verdict over every run of its
        partition; and the next page's key."""
        t = test_results.c
        where = [c == v for c, v in ((t.job_id, job_id), (t.task_id, task_id), (t.partition_id, partition_id)) if v]
        keys_query = keyset(
            select(t.partition_id, t.test_id).where(*where).distinct(), page, [t.partition_id, t.test_id]
        )
        async with self.db.reading() as conn:
            keys = [tuple(k) for k in (await conn.execute(keys_query)).all()]
            shown, next_key = split(keys, page, lambda key: key)
            rows: Sequence[Any] = []
            if shown:
                rows = (
                    await conn.execute(
                        select(
                            t.partition_id,
                            t.task_name,
                            t.project,
                            t.test_id,
                            t.file,
                            t.run,
                            t.outcome,
                            t.duration,
                            t.message,
                            t.recorded_at,
                        )
                        .where(tuple_(t.partition_id, t.test_id).in_(shown))
                        .order_by(t.partition_id, t.test_id, t.run, t.seq)
                    )
                ).all()
        found: dict[tuple[str, str], TestVerdict] = {}
        judged_at: dict[tuple[str, str], tuple[str, datetime]] = {}
        for row in rows:
            judged_at[(row.partition_id, row.test_id)] = (row.project, row.recorded_at)
            verdict = found.get((row.partition_id, row.test_id))
            if verdict is None:
                verdict = found[(row.partition_id, row.test_id)] = TestVerdict(
                    partition_id=row.partition_id,
                    task_name=row.task_name,
                    test_id=row.test_id,
                    file=row.file,
                    verdict="passed",
                    runs=[],
                )
            verdict.runs.append(
                RunOutcome(run=row.run, outcome=row.outcome, duration=row.duration, message=row.message)
            )
        for verdict in found.values():
            verdict.verdict = verdict_of([r.outcome for r in verdict.runs])
        failed = {key: judged_at[key] for key, v in found.items() if v.verdict == "failed"}
        for key, regression in (await self._regressions(failed)).items():
            found[key].regression = regression
        return [found[k] for k in shown if k in found], next_key

    async def _regressions(
        self, failed: dict[tuple[str, str], tuple[str, datetime]]
    ) -> dict[tuple[str, str], Regression]:
        """For each failed (partition, test), judged at its project and time: where its test began
        failing every time, in its history up to then, when it had passed before."""
        by_project: dict[str, set[str]] = {}
        for (_, test_id), (project, _) in failed.items():
            by_project.setdefault(project, set()).add(test_id)
        earliest = min((at for _, at in failed.values()), default=None)
        if earliest is None:
            return {}
        rows: dict[str, dict[str, list[Any]]] = {}
        async with self.db.reading() as conn:
            for project, tests in by_project.items():
                rows[project] = await _histories(conn, project, sorted(tests), earliest - REGRESSION_WINDOW)
        found: dict[tuple[str, str], Regression] = {}
        for (partition_id, test_id), (project, at) in failed.items():
            seen = [r for r in rows[project].get(test_id, []) if r.recorded_at <= at]
            regression = history_of(test_id, seen).regression if seen else None
            if regression is not None:
                found[(partition_id, test_id)] = regression
        return found

    async def known_intermittent(self, project: str, test_ids: Sequence[str], since: datetime) -> set[str]:
        """Of these tests, those that failed and then passed on a re-run of a partition since `since`."""
        t = test_results.c
        rows: list[Any] = []
        wanted = list(dict.fromkeys(test_ids))
        async with self.db.reading() as conn:
            for start in range(0, len(wanted), _BATCH):
                rows += (
                    await conn.execute(
                        select(t.test_id, t.partition_id, t.run, t.seq, t.outcome)
                        .where(
                            t.project == project, t.recorded_at >= since, t.test_id.in_(wanted[start : start + _BATCH])
                        )
                        .order_by(t.test_id, t.partition_id, t.run, t.seq)
                    )
                ).all()
        outcomes: dict[tuple[str, str], list[str]] = {}
        for row in rows:
            outcomes.setdefault((row.test_id, row.partition_id), []).append(row.outcome)
        return {test for (test, _), seen in outcomes.items() if verdict_of(seen) == "intermittent"}

    async def history(
        self, project: str, since: datetime, test_id: str | None = None, limit: int = 100
    ) -> list[TestHistory]:
        """One test's history since `since`; without `test_id`, the tests that failed most often since
        then (at most `limit`), the most often intermittent first."""
        t = test_results.c
        async with self.db.reading() as conn:
            if test_id is not None:
                wanted = [test_id]
            else:
                wanted = list(
                    (
                        await conn.execute(
                            select(t.test_id)
                            .where(t.project == project, t.recorded_at >= since, t.outcome.in_(sorted(FAILING)))
                            .group_by(t.test_id)
                            .order_by(func.count().desc(), t.test_id)
                            .limit(limit)
                        )
                    ).scalars()
                )
            by_test = await _histories(conn, project, wanted, since)
        found = [history_of(name, found_rows) for name, found_rows in by_test.items()]
        return sorted(found, key=lambda h: (-h.intermittent, -h.failed, h.test_id))


async def _histories(
    conn: AsyncConnection, project: str, test_ids: Sequence[str], since: datetime
) -> dict[str, list[Any]]:
    """Each of these tests' results in the project since `since`, oldest first (what `history_of` reads)."""
    t = test_results.c
    by_test: dict[str, list[Any]] = {}
    for start in range(0, len(test_ids), _BATCH):
        for row in (
            await conn.execute(
                select(t.test_id, t.partition_id, t.job_id, t.run, t.seq, t.file, t.outcome, t.recorded_at)
                .where(t.project == project, t.recorded_at >= since, t.test_id.in_(test_ids[start : start + _BATCH]))
                .order_by(t.recorded_at, t.run_id, t.seq)
            )
        ).all():
            by_test.setdefault(row.test_id, []).append(row)
    return by_test


def _time_run_seq(key: list[Any]) -> list[Any]:
    return [datetime.fromisoformat(str(key[0])), str(key[1]), int(key[2])]
