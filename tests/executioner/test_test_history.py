"""A test's flakiness over its partitions, oldest first: verdicts per partition over its runs, and the
partition since which it fails every time after having passed (the push that broke it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from infrax.executioner.test_results import history_of, verdict_of

START = datetime(2026, 12, 1, tzinfo=UTC)


def results(*partitions: list[str]) -> list[SimpleNamespace]:
    """Rows of one test: each partition (of its own job) with its runs' outcomes, a day apart."""
    rows = []
    for n, outcomes in enumerate(partitions):
        for run, outcome in enumerate(outcomes):
            rows.append(
                SimpleNamespace(
                    partition_id=f"p{n}",
                    job_id=f"job{n}",
                    run=run,
                    seq=0,
                    file="tests/test_a.py",
                    outcome=outcome,
                    recorded_at=START + timedelta(days=n, minutes=run),
                )
            )
    return rows


def test_verdicts_over_a_partitions_runs() -> None:
    assert verdict_of(["passed"]) == "passed"
    assert verdict_of(["failed", "passed"]) == "intermittent"
    assert verdict_of(["failed", "error", "failed"]) == "failed"
    assert verdict_of(["skipped"]) == "skipped"


def test_counts_over_the_window_and_no_regression_for_a_flaky_test() -> None:
    found = history_of("t", results(["passed"], ["failed", "passed"], ["passed"], ["failed", "passed"]))
    assert (found.runs, found.failures, found.partitions, found.failed, found.intermittent) == (6, 2, 4, 0, 2)
    assert found.last_verdict == "intermittent" and found.regression is None


def test_a_test_failing_every_time_since_a_push_is_that_pushs_regression() -> None:
    found = history_of("t", results(["passed"], ["failed", "passed"], ["failed", "failed"], ["failed", "failed"]))
    assert found.regression is not None
    assert (found.regression.job_id, found.regression.partition_id) == ("job2", "p2")
    assert found.regression.since == START + timedelta(days=2)
    assert (found.failed, found.intermittent, found.last_verdict) == (2, 1, "failed")


def test_a_test_that_never_passed_is_no_regression_and_one_that_passes_again_is_none() -> None:
    assert history_of("t", results(["failed"], ["failed"])).regression is None
    assert history_of("t", results(["passed"], ["failed"], ["passed"])).regression is None
