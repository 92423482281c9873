"""The lines of a run's output that say what failed, picked out as the output streams by.

A failed partition's message carries the first of them ("exited with code 1: FAILED
tests/test_calc.py::test_sub - assert 3 == 4"), and so do its task's, its job's, the Treeherder
job's summary and the GitHub status's description. The kinds, best first: a test harness's own
verdict on one test (pytest's `FAILED`/`ERROR` summary lines, Mozilla's `TEST-UNEXPECTED-…`), then
an exception's last line (`AssertionError: …`, `E   assert 3 == 4`), then a traceback's start. A
message takes the lines of the best kind found, so a summary line is preferred to the traceback
that led to it.

Bounded whatever the output: lines longer than `LINE_LIMIT` are cut, at most `KEPT` lines of each
kind are kept, and the line numbers of at most `NUMBERED` matches (for a page to link to them).
"""

from __future__ import annotations

import re

LINE_LIMIT = 300
KEPT = 3
NUMBERED = 200
MESSAGE_LIMIT = 500

_KINDS = (
    # 0: one test's verdict (pytest's summary, unittest's, Mozilla's harnesses', TAP's)
    re.compile(r"^(?:FAILED|ERROR) [^\s(]|^(?:FAIL|ERROR): \S|TEST-UNEXPECTED-[A-Z]+|^not ok \d"),
    # 1: what was raised
    re.compile(r"^E {2,}\S|^(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Failure)(?::|$)|panicked at "),
    # 2: where it started
    re.compile(r"^Traceback \(most recent call last\):"),
)
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def kind_of(line: str) -> int | None:
    """Which kind of failure line `line` is (0 best), or None."""
    text = _ANSI.sub("", line).rstrip()
    for kind, pattern in enumerate(_KINDS):
        if pattern.search(text):
            return kind
    return None


class FailureLines:
    """Fed the output as it comes (pieces need not end at lines), keeps what `summary` gives."""

    def __init__(self) -> None:
        self.kept: list[list[str]] = [[] for _ in _KINDS]
        self.numbers: list[int] = []  # 1-based line numbers of matches, in the output alone
        self._partial = ""
        self._line = 0

    def feed(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()[: LINE_LIMIT * 4]
        for line in lines:
            self._take(line)

    def close(self) -> None:
        if self._partial:
            self._take(self._partial)
            self._partial = ""

    def _take(self, line: str) -> None:
        self._line += 1
        kind = kind_of(line[: LINE_LIMIT * 4])
        if kind is None:
            return
        if len(self.numbers) < NUMBERED:
            self.numbers.append(self._line)
        if len(self.kept[kind]) < KEPT:
            clean = _ANSI.sub("", line).strip()
            self.kept[kind].append(clean if len(clean) <= LINE_LIMIT else clean[: LINE_LIMIT - 1] + "…")

    def summary(self) -> str | None:
        """The lines of the best kind found, joined, and the first exception's line when those do not
        already say it (unittest's `FAIL: test_x` does not; pytest's summary does); None when nothing
        looked like a failure."""
        for kind, lines in enumerate(self.kept):
            if lines:
                shown = list(lines)
                if kind == 0 and self.kept[1]:
                    raised = self.kept[1][0].removeprefix("E").strip()
                    if not any(raised in line for line in shown):
                        shown.append(raised)
                return "; ".join(shown)
        return None


def failure_message(base: str | None, summary: str | None) -> str | None:
    """`base` ("exited with code 1") followed by what failed, at most `MESSAGE_LIMIT` characters."""
    if not summary:
        return base
    text = f"{base}: {summary}" if base else summary
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"
