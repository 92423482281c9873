"""Path patterns as in `.gitignore`, the patterns every developer already writes (the `pathspec`
library's implementation of git's wildmatch rules):

- a pattern with a `/` at its start or in its middle is anchored at the repository's top
  (`tests/test_*.py`), one without matches at any depth (`*.py`, `conftest.py`);
- `*` and `?` stay within one folder; `**/` is zero or more folders (`pkg/**/tests/*.py` takes
  `pkg/tests/a.py` too), `/**` everything below;
- a pattern that names a folder takes everything under it (`docs`, `docs/`, `src/*`);
- `!pattern` takes back what earlier patterns took, the last pattern matching a path decides.

Used for a task's `files` (selected from a revision's tracked files) and its `paths` (which
changed paths make it run).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import pathspec

_GLOB = set("*?[")


def is_pattern(text: str) -> bool:
    """A glob, a negation or a folder (`dir/`), as opposed to a file named as it is."""
    return bool(_GLOB & set(text)) or text.startswith("!") or text.endswith("/")


@functools.lru_cache(maxsize=1024)
def _spec(patterns: tuple[str, ...]) -> pathspec.GitIgnoreSpec:
    return pathspec.GitIgnoreSpec.from_lines(patterns)


def matches(path: str, pattern: str) -> bool:
    return _spec((pattern,)).match_file(path)


@dataclass(frozen=True)
class Selection:
    files: list[str]  # in the order of the files given
    counts: dict[str, int]  # each pattern: the files it takes alone (a negation: those it takes back)

    @property
    def empty(self) -> list[str]:
        """The patterns that take nothing (a negation that takes nothing back is no mistake)."""
        return [p for p, n in self.counts.items() if n == 0 and not p.startswith("!")]

    def describe(self) -> str:
        return ", ".join(f"{p!r} {n}" for p, n in self.counts.items())


def select(patterns: Sequence[str], files: Iterable[str]) -> Selection:
    """The files the patterns take, together and one by one."""
    candidates = list(files)
    counts: dict[str, int] = {}
    for pattern in patterns:
        if pattern.startswith("!"):
            taken = set(_spec(tuple(p for p in patterns[: patterns.index(pattern)])).match_files(candidates))
            counts[pattern] = sum(1 for f in taken if _spec((pattern[1:],)).match_file(f))
        else:
            counts[pattern] = sum(1 for _ in _spec((pattern,)).match_files(candidates))
    chosen = set(_spec(tuple(patterns)).match_files(candidates))
    return Selection(files=[f for f in candidates if f in chosen], counts=counts)
