"""Results per test, from the JUnit XML a run leaves in `$INFRAX_REPORT_DIR` (the format pytest,
Jest, mocha, cargo-nextest, gotestsum and Maven Surefire all write).

A report is the task's word, and the task is hostile: the XML is parsed by defusedxml (no entity
expansion, no external entities, no DTD), then read by junitparser; what one run may report is
bounded, and every text is cut to a size.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import defusedxml.ElementTree as SafeElementTree
from defusedxml import DefusedXmlException
from junitparser import Error, Failure, JUnitXml, Skipped, TestCase, TestSuite
from junitparser.junitparser import JUnitXmlError

Outcome = Literal["passed", "failed", "error", "skipped"]
OUTCOMES: tuple[Outcome, ...] = ("passed", "failed", "error", "skipped")
FAILING: frozenset[str] = frozenset({"failed", "error"})

MAX_REPORT_BYTES = 20 << 20  # one file
MAX_TESTS = 20_000  # one run
MAX_MESSAGE = 2000  # characters of a test's failure message kept
MAX_NAME = 1000
REPORTS_PREFIX = "reports/"  # where the agent puts a run's reports among its artifacts


class ReportError(Exception):
    """The file is not a JUnit report infrax can read: the run's log says so, nothing else fails."""


@dataclass(frozen=True)
class TestResult:
    test_id: str  # pytest's node id where the report allows it: `file::Class::name`
    name: str
    classname: str | None
    file: str | None
    outcome: Outcome
    duration: float
    message: str | None = None

    def wire(self) -> dict[str, Any]:
        return {
            "testId": self.test_id,
            "name": self.name,
            "classname": self.classname,
            "file": self.file,
            "outcome": self.outcome,
            "duration": self.duration,
            "message": self.message,
        }


def is_report(artifact_name: str) -> bool:
    return artifact_name.startswith(REPORTS_PREFIX) and artifact_name.endswith(".xml")


def parse_junit(data: bytes, files: Sequence[str] = ()) -> list[TestResult]:
    """Every test case of the report, with the file it belongs to: the case's own `file`
    attribute, its suite's, or else the partition's file its class name names (`tests.test_a.TestA`
    is `tests/test_a.py`)."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"larger than {MAX_REPORT_BYTES >> 20} MB")
    try:
        root = SafeElementTree.fromstring(data)
        report = JUnitXml.fromroot(root)  # type: ignore[arg-type]  # its stub names lxml's Element; it takes ElementTree's
    except (SafeElementTree.ParseError, DefusedXmlException, JUnitXmlError, ValueError) as error:
        raise ReportError(f"not a JUnit XML report: {error}") from None
    known = set(files)
    results: list[TestResult] = []
    for suite_file, case in _cases(report):
        if len(results) >= MAX_TESTS:
            break
        results.append(_result(case, suite_file, known))
    return results


def _cases(report: JUnitXml) -> Iterator[tuple[str | None, TestCase]]:
    def walk(suite: TestSuite) -> Iterator[tuple[str | None, TestCase]]:
        suite_file = suite._elem.get("file") or suite._elem.get("filepath")
        for case in suite._elem.iterfind("testcase"):  # its own cases; iterating it would give its suites' too
            yield suite_file, TestCase.fromelem(case)
        for inner in suite._elem.iterfind("testsuite"):
            yield from walk(TestSuite.fromelem(inner))

    for suite in report:
        yield from walk(suite)


def _result(case: TestCase, suite_file: str | None, known: set[str]) -> TestResult:
    name = _cut(case.name or "", MAX_NAME)
    classname = _cut(case.classname, MAX_NAME) if case.classname else None
    file = _collected_file(case._elem.get("file") or suite_file, classname, known)
    outcome: Outcome = "passed"
    message = None
    for result in case.result:
        if isinstance(result, Error | Failure):
            outcome = "error" if isinstance(result, Error) and outcome != "failed" else "failed"
            message = message or result.message or _first_line(result.text)
        elif isinstance(result, Skipped) and outcome == "passed":
            outcome = "skipped"
            message = result.message
    try:
        duration = max(0.0, float(case.time or 0.0))
    except (TypeError, ValueError):
        duration = 0.0
    return TestResult(
        test_id=_test_id(name, classname, file),
        name=name,
        classname=classname,
        file=_cut(file, MAX_NAME) if file else None,
        outcome=outcome,
        duration=round(duration, 6),
        message=_cut(message, MAX_MESSAGE) if message else None,
    )


def _first_line(text: str | None) -> str | None:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None  # a traceback ends with what was raised


def _collected_file(given: str | None, classname: str | None, known: set[str]) -> str | None:
    """The file a test was collected from: the one its runner takes back as an argument. pytest's
    xunit1 `file` is where the test's function is defined, which for a class inheriting its tests
    from a class of another module (`class TestFast(TestBase)`) is the base's module, while its
    class name is the collected one (`tests.test_fast.TestFast`): the class name then wins."""
    if not given:
        return _file_of(classname, known)
    if not (given.endswith(".py") and classname):
        return given
    module = given[: -len(".py")].replace("/", ".")
    if classname == module or classname.startswith(module + "."):
        return given
    return _file_of(classname, known) or _module_file(classname) or given


def _module_file(classname: str) -> str | None:
    """`tests.test_fast.TestFast` (or `….TestFast.TestInner`): `tests/test_fast.py`, by dropping
    the class names (capitalised, as PEP 8 and pytest's `Test*` have them) from its end."""
    parts = classname.split(".")
    while len(parts) > 1 and parts[-1][:1].isupper():
        parts.pop()
    return "/".join(parts) + ".py" if len(parts) < len(classname.split(".")) else None


def _file_of(classname: str | None, known: set[str]) -> str | None:
    """The partition's file a dotted class name lives in: its longest prefix that names one."""
    if not classname:
        return None
    if classname in known:
        return classname
    parts = classname.split(".")
    for end in range(len(parts), 0, -1):
        candidate = "/".join(parts[:end]) + ".py"
        if candidate in known:
            return candidate
    return None


def _test_id(name: str, classname: str | None, file: str | None) -> str:
    if file and file.endswith(".py"):
        module = file[: -len(".py")].replace("/", ".")
        # Nested classes are `Outer.Inner` in the class name, `Outer::Inner` in a node id.
        inner = (
            classname[len(module) + 1 :].replace(".", "::")
            if classname and classname.startswith(module + ".")
            else None
        )
        return _cut("::".join(p for p in (file, inner, name) if p), MAX_NAME)
    return _cut("::".join(p for p in (classname or file, name) if p), MAX_NAME)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def file_durations(results: Iterable[TestResult]) -> dict[str, float]:
    """Seconds per file: the sum of its tests' times (the optimizer's per-file history)."""
    durations: dict[str, float] = {}
    for result in results:
        if result.file:
            durations[result.file] = round(durations.get(result.file, 0.0) + result.duration, 6)
    return durations


def rerun_names(results: Sequence[TestResult], limit: int) -> list[str] | None:
    """What failed, as a re-run names it to the bootstrapper: the failing tests' ids where each is a
    path a runner takes as an argument (pytest's `file::Class::test`), else their files; None when
    none failed, a failing test has no file, or there are more than `limit`."""
    failing = [r for r in results if r.outcome in FAILING]
    if not failing or any(r.file is None for r in failing):
        return None
    ids = list(dict.fromkeys(r.test_id for r in failing))
    if len(ids) <= limit and all(r.test_id.startswith(f"{r.file}::") for r in failing):
        return ids
    files = list(dict.fromkeys(r.file for r in failing if r.file))
    return files if len(files) <= limit else None


def counts(results: Iterable[TestResult]) -> dict[str, int]:
    found: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
    for result in results:
        found[result.outcome] += 1
    return found


def failure_summary(results: Sequence[TestResult], limit: int = 3) -> str | None:
    """`2 tests failed: tests/test_a.py::test_x (AssertionError: 4 != 5); …`, or None when none did."""
    failing = [r for r in results if r.outcome in FAILING]
    if not failing:
        return None
    shown = "; ".join(f"{r.test_id}{f' ({r.message})' if r.message else ''}" for r in failing[:limit])
    more = f"; and {len(failing) - limit} more" if len(failing) > limit else ""
    noun = "test" if len(failing) == 1 else "tests"
    return f"{len(failing)} {noun} failed: {shown}{more}"
