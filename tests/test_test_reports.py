"""Reading JUnit XML: the formats real runners write, and what a hostile report cannot do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from infrax.agent.artifacts import gather_reports
from infrax.test_reports import (
    MAX_MESSAGE,
    MAX_REPORT_BYTES,
    ReportError,
    counts,
    failure_summary,
    file_durations,
    parse_junit,
)

# pytest with junit_family=xunit1: every case names its file.
XUNIT1 = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="4">
<testcase classname="tests.test_a" file="tests/test_a.py" line="1" name="test_ok" time="0.25"/>
<testcase classname="tests.test_a.TestX" file="tests/test_a.py" line="4" name="test_bad" time="0.5">
  <failure message="AssertionError: 4 != 5">Traceback ...</failure></testcase>
<testcase classname="tests.sub.test_b" file="tests/sub/test_b.py" name="test_fixture" time="0.125">
  <error message="failed on setup with &quot;KeyError&quot;">E KeyError</error></testcase>
<testcase classname="tests.sub.test_b" file="tests/sub/test_b.py" name="test_later" time="0">
  <skipped type="pytest.skip" message="not yet"/></testcase>
</testsuite></testsuites>"""

# Jest (jest-junit) and Go (gotestsum): nested suites, the file on the suite, no dotted module.
NESTED = b"""<testsuites>
<testsuite name="sum.test.js" file="src/sum.test.js">
  <testcase classname="sum adds" name="adds 1 + 2" time="0.003"/></testsuite>
<testsuite name="outer"><testsuite name="inner" file="pkg/inner_test.go">
  <testcase classname="pkg" name="TestInner" time="1.5"><failure>inner_test.go:12: got 3
want 4</failure></testcase></testsuite></testsuite>
</testsuites>"""


def test_pytest_reports_give_node_ids_files_outcomes_times_and_messages() -> None:
    results = parse_junit(XUNIT1)
    assert [(r.test_id, r.file, r.outcome) for r in results] == [
        ("tests/test_a.py::test_ok", "tests/test_a.py", "passed"),
        ("tests/test_a.py::TestX::test_bad", "tests/test_a.py", "failed"),
        ("tests/sub/test_b.py::test_fixture", "tests/sub/test_b.py", "error"),
        ("tests/sub/test_b.py::test_later", "tests/sub/test_b.py", "skipped"),
    ]
    messages = [None, "AssertionError: 4 != 5", 'failed on setup with "KeyError"', "not yet"]
    assert [r.message for r in results] == messages
    assert file_durations(results) == {"tests/test_a.py": 0.75, "tests/sub/test_b.py": 0.125}
    assert counts(results) == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    assert failure_summary(results) == (
        "2 tests failed: tests/test_a.py::TestX::test_bad (AssertionError: 4 != 5); "
        'tests/sub/test_b.py::test_fixture (failed on setup with "KeyError")'
    )


def test_without_a_file_attribute_the_class_name_finds_the_partitions_file() -> None:
    xunit2 = XUNIT1.replace(b' file="tests/test_a.py"', b"").replace(b' file="tests/sub/test_b.py"', b"")
    results = parse_junit(xunit2, files=["tests/test_a.py", "tests/sub/test_b.py"])
    assert [r.file for r in results] == ["tests/test_a.py"] * 2 + ["tests/sub/test_b.py"] * 2
    assert results[1].test_id == "tests/test_a.py::TestX::test_bad"
    unknown = parse_junit(xunit2, files=[])
    assert unknown[1].file is None and unknown[1].test_id == "tests.test_a.TestX::test_bad"


def test_nested_suites_and_files_named_on_the_suite() -> None:
    results = parse_junit(NESTED)
    assert [(r.test_id, r.file, r.outcome, r.duration) for r in results] == [
        ("sum adds::adds 1 + 2", "src/sum.test.js", "passed", 0.003),
        ("pkg::TestInner", "pkg/inner_test.go", "failed", 1.5),
    ]
    assert results[1].message == "want 4", "without a message attribute: the text's last line"
    assert failure_summary(results[:1]) is None


@pytest.mark.parametrize(
    "report",
    [
        # a billion laughs: entities expanding into each other
        b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        b'<testsuite><testcase name="&b;"/></testsuite>',
        # an external entity: a file of the executioner's machine
        b'<?xml version="1.0"?><!DOCTYPE t [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        b'<testsuite><testcase name="&x;"/></testsuite>',
        b"not xml at all",
        b"<html><body>a page</body></html>",
    ],
)
def test_a_hostile_or_foreign_report_is_refused_not_expanded(report: bytes) -> None:
    with pytest.raises(ReportError):
        parse_junit(report)


def test_what_a_report_may_hold_is_bounded() -> None:
    with pytest.raises(ReportError, match="larger than"):
        parse_junit(b" " * (MAX_REPORT_BYTES + 1))
    long = b'<testsuite><testcase name="t"><failure message="' + b"x" * 10_000 + b'"/></testcase></testsuite>'
    [result] = parse_junit(long)
    assert len(result.message or "") == MAX_MESSAGE


def test_many_failures_are_summarised_with_a_count() -> None:
    cases = "".join(f'<testcase name="t{n}"><failure message="m{n}"/></testcase>' for n in range(5))
    assert failure_summary(parse_junit(f"<testsuite>{cases}</testsuite>".encode())) == (
        "5 tests failed: t0 (m0); t1 (m1); t2 (m2); and 2 more"
    )


def test_the_agent_moves_report_files_among_the_artifacts_and_follows_no_link(tmp_path: Path) -> None:
    report_dir, artifacts = tmp_path / "report", tmp_path / "artifacts"
    report_dir.mkdir()
    artifacts.mkdir()
    (report_dir / "junit.xml").write_text("<testsuite/>")
    (report_dir / "durations.json").write_text("{}")
    os.symlink("/etc/passwd", report_dir / "passwd.xml")
    (artifacts / "reports").mkdir()
    (artifacts / "reports" / "mine.xml").write_text("the task's own")
    (report_dir / "mine.xml").write_text("from the report dir")

    assert gather_reports(report_dir, artifacts) == 1
    assert sorted(p.name for p in (artifacts / "reports").iterdir()) == ["junit.xml", "mine.xml"]
    assert (artifacts / "reports" / "mine.xml").read_text() == "the task's own"
    assert (report_dir / "durations.json").exists() and (report_dir / "passwd.xml").is_symlink()


def test_a_reports_folder_that_is_a_link_is_not_written_through(tmp_path: Path) -> None:
    report_dir, artifacts, elsewhere = tmp_path / "report", tmp_path / "artifacts", tmp_path / "elsewhere"
    for folder in (report_dir, artifacts, elsewhere):
        folder.mkdir()
    (report_dir / "junit.xml").write_text("<testsuite/>")
    os.symlink(elsewhere, artifacts / "reports")
    assert gather_reports(report_dir, artifacts) == 0
    assert list(elsewhere.iterdir()) == [] and (report_dir / "junit.xml").exists()


INHERITED_SUITE = {
    "tests/__init__.py": "",
    "tests/base.py": (
        "class Shared:\n    def test_shared(self):\n        pass\n\n    def test_other(self):\n        pass\n"
    ),
    "tests/test_base.py": (
        "class TestBase:\n    def test_one(self):\n        pass\n\n    def test_two(self):\n        assert 1 == 2\n"
    ),
    "tests/test_fast.py": (
        "from tests.base import Shared\nfrom tests.test_base import TestBase\n\n\n"
        "class TestFast(TestBase):\n    pass\n\n\nclass TestMixed(Shared):\n    def test_own(self):\n        pass\n\n"
        "    class TestInner(TestBase):\n        pass\n\n\ndef test_function():\n    pass\n"
    ),
    "tests/deep/__init__.py": "",
    "tests/deep/test_more.py": "from tests.test_base import TestBase\n\n\nclass TestMore(TestBase):\n    pass\n",
}


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
def test_inherited_tests_count_once_each_where_they_were_collected_in_either_junit_family(
    tmp_path: Path, family: str
) -> None:
    for name, text in INHERITED_SUITE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    report = tmp_path / "junit.xml"
    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-o", f"junit_family={family}"]
        + ["-o", "python_classes=Test*", f"--junitxml={report}", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    summary = re.search(r"(\d+) failed, (\d+) passed", ran.stdout)
    assert summary is not None, ran.stdout[-2000:]
    failed, passed = int(summary[1]), int(summary[2])

    files = [n for n in INHERITED_SUITE if n.endswith(".py") and "test_" in n]
    results = parse_junit(report.read_bytes(), files)

    ids = {r.test_id for r in results}
    assert len(ids) == len(results) == failed + passed
    assert sum(r.outcome == "failed" for r in results) == failed
    assert {
        "tests/test_fast.py::TestFast::test_two",
        "tests/test_fast.py::TestMixed::TestInner::test_one",
        "tests/test_fast.py::TestMixed::test_shared",
        "tests/deep/test_more.py::TestMore::test_one",
        "tests/test_base.py::TestBase::test_one",
        "tests/test_fast.py::test_function",
    } <= ids
    # Each id is what pytest takes back as an argument: the same tests, run again by their ids.
    again = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "-q", *sorted(ids)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert f"{failed} failed, {passed} passed" in again.stdout, again.stdout[-2000:]
