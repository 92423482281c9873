"""A failed run's failing tests, the two ways Treeherder's log parsers read them.

- An errorsummary artifact in mozlog's format (one JSON object a line: `test_groups`, then a
  `test_result` per failing test and a `group_result` per test file): Treeherder picks an artifact
  whose name ends with `_errorsummary.log` from the run's artifact list and stores each
  `test_result` as a `failure_line`, the failure summary's named tests.
- Lines at the end of the run's log in mozlog's tbpl form, `TEST-UNEXPECTED-FAIL | <test> |
  <message>`, which Treeherder's error parser matches (pytest's own lines it does not): its
  `text_log_error` rows, the lines the log viewer and the failure summary highlight.

The tests are what the run's JUnit reports say (`infrax.test_reports`); a run with no report has
neither, and its log's own failure lines are all Treeherder has.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from infrax.test_reports import FAILING, TestResult

# infrax's own name among the run's artifacts (a task's may not start with `infrax/`), and the
# suffix Treeherder's job loader looks for.
ARTIFACT = "infrax/tests_errorsummary.log"
MOZLOG_STATUS = {"failed": "FAIL", "error": "ERROR", "passed": "PASS", "skipped": "SKIP"}
MESSAGE_LIMIT = 1000  # of each line's message: the summary names the failure, the log has the rest
MAX_TESTS = 200  # Treeherder keeps the first FAILURE_LINES_CUTOFF (150) lines of an errorsummary


def _group(result: TestResult) -> str:
    return result.file or result.classname or "tests"


def _message(result: TestResult) -> str:
    text = (result.message or "").strip()
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def failing(results: Sequence[TestResult]) -> list[TestResult]:
    return [r for r in results if r.outcome in FAILING][:MAX_TESTS]


def errorsummary(results: Sequence[TestResult]) -> bytes:
    """The run's errorsummary, mozlog's `errorsummary` formatter's shape; empty when nothing failed."""
    bad = failing(results)
    if not bad:
        return b""
    groups = list(dict.fromkeys(_group(r) for r in results))
    lines: list[dict[str, object]] = [{"action": "test_groups", "line": 0, "groups": groups}]
    for result in bad:
        lines.append(
            {
                "action": "test_result",
                "line": len(lines),
                "test": result.test_id,
                "subtest": None,
                "group": _group(result),
                "status": MOZLOG_STATUS[result.outcome],
                "expected": "PASS",
                "message": _message(result) or None,
                "stack": None,
                "known_intermittent": [],
            }
        )
    failed_groups = {_group(r) for r in bad}
    for group in groups:
        duration = sum(r.duration for r in results if _group(r) == group)
        lines.append(
            {
                "action": "group_result",
                "line": len(lines),
                "group": group,
                "status": "ERROR" if group in failed_groups else "OK",
                "duration": round(duration * 1000),  # milliseconds, as mozlog reports them
            }
        )
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines).encode()


def log_lines(results: Sequence[TestResult]) -> list[str]:
    """`TEST-UNEXPECTED-FAIL | tests/test_a.py::test_x | AssertionError: 4 != 5`, one a failing test."""
    lines = []
    for result in failing(results):
        first = _message(result).splitlines()[0] if result.message else "failed"
        status = MOZLOG_STATUS[result.outcome]
        test = " ".join(result.test_id.split())  # the task's report names it: one line, whatever it says
        lines.append(f"TEST-UNEXPECTED-{status} | {test} | {first}")
    return lines
