"""The lines of a run's output that say what failed (infrax.failures), as real harnesses print them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from infrax.failures import MESSAGE_LIMIT, FailureLines, failure_message, kind_of


def picked(output: str, pieces: int = 7) -> FailureLines:
    """Fed in uneven pieces, as output messages arrive: lines split across them."""
    lines = FailureLines()
    step = max(1, len(output) // pieces)
    for start in range(0, len(output), step):
        lines.feed(output[start : start + step])
    lines.close()
    return lines


def test_a_real_pytest_failure_names_the_test_and_the_assertion(tmp_path: Path) -> None:
    (tmp_path / "test_calc.py").write_text(
        "def test_add():\n    assert 1 + 1 == 2\n\ndef test_sub():\n    assert 3 - 1 == 4\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:randomly", "-p", "no:cacheprovider", "test_calc.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    lines = picked(run.stdout)
    assert lines.summary() == "FAILED test_calc.py::test_sub - assert (3 - 1) == 4"
    numbered = run.stdout.splitlines()
    assert all(kind_of(numbered[n - 1]) is not None for n in lines.numbers)
    assert any(numbered[n - 1].startswith("FAILED test_calc.py::test_sub") for n in lines.numbers)


def test_unittest_s_verdict_comes_with_what_was_raised(tmp_path: Path) -> None:
    (tmp_path / "test_mul.py").write_text(
        "import unittest\n\nclass T(unittest.TestCase):\n    def test_mul(self):\n        self.assertEqual(2 * 2, 5)\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "unittest", "-v", "test_mul"], cwd=tmp_path, capture_output=True, text=True
    )
    summary = picked(run.stderr).summary() or ""
    assert summary.startswith("FAIL: test_mul (test_mul.T") and summary.endswith("AssertionError: 4 != 5")
    assert "failures=1" not in summary  # the run's own tally is no test's verdict


def test_mozilla_harness_lines_and_a_bare_traceback() -> None:
    assert (
        picked(
            "TEST-PASS | a.js\nTEST-UNEXPECTED-FAIL | dom/test_b.html | expected 1, got 2\nTEST-PASS | c.js\n"
        ).summary()
        == "TEST-UNEXPECTED-FAIL | dom/test_b.html | expected 1, got 2"
    )
    crash = "starting\nTraceback (most recent call last):\n  File \"x.py\", line 1\nKeyError: 'build'\n"
    assert picked(crash).summary() == "KeyError: 'build'"
    assert picked("all good\n42 passed\n").summary() is None


def test_what_is_kept_is_bounded_however_much_fails() -> None:
    lines = FailureLines()
    for n in range(100_000):
        lines.feed(f"FAILED tests/test_{n}.py::test_{n} - " + "x" * 1000 + "\n")
    assert len(lines.kept[0]) == 3 and all(len(line) <= 300 for line in lines.kept[0])
    assert len(lines.numbers) == 200
    message = failure_message("exited with code 1", lines.summary())
    assert message is not None and len(message) <= MESSAGE_LIMIT and message.startswith("exited with code 1: FAILED")
    assert failure_message("exited with code 1", None) == "exited with code 1"
