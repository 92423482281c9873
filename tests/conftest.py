"""Fixtures shared by the suites: real stacks of infrax components on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file of the team's reference data, read in place; a missing folder skips, except in CI."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI always has ../shared beside the repository")
        pytest.skip(f"{path} is absent (the ../shared reference folder is not beside this checkout)")
    return path
