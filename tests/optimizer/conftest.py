"""Fixtures of the optimizer tests: the real runtime data set, an SQLite store, the in-process bus."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infrax.bus.memory import MemoryBus
from infrax.store import Database

# Read in place, never copied into the repository (see its SOURCE.md).
RUNTIMES = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "runtimes"
MIN_ITEMS = 50


@pytest.fixture(scope="session")
def runtime_suites() -> dict[str, dict[str, float]]:
    """{suite: {item: seconds}} for every suite of the real data with at least 50 items."""
    if not RUNTIMES.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"the runtime data set is missing at {RUNTIMES}; CI must provide ../shared beside the repo")
        pytest.skip(f"the runtime data set is not at {RUNTIMES} (../shared/data/runtimes beside the repository)")
    suites = {
        f"mozilla/{suite}": {name: float(seconds) for name, seconds in items.items()}
        for suite, items in json.loads((RUNTIMES / "manifest-runtimes-unix.json").read_text()).items()
    }
    per_file: dict[str, float] = defaultdict(float)
    for test_id, seconds in json.loads((RUNTIMES / "tilavarauspalvelu-core.test_durations.json").read_text()).items():
        per_file[test_id.split("::", 1)[0]] += float(seconds)
    suites["pytest-split/tilavarauspalvelu-core"] = dict(per_file)
    return {name: items for name, items in suites.items() if len(items) >= MIN_ITEMS}


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database("sqlite:///" + str(tmp_path / "db.sqlite"))
    await database.create_schema()
    yield database
    await database.close()


@pytest.fixture
async def bus() -> AsyncIterator[MemoryBus]:
    memory = MemoryBus(redelivery_delay=0.01)
    await memory.start()
    yield memory
    await memory.close()
