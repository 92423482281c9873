"""Runtime history learned from one run makes the next run's partitions more even."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.e2e.conftest import script, task

DURATIONS = {
    "slow_1.py": 0.4,
    "slow_2.py": 0.4,
    "quick_1.py": 0.1,
    "quick_2.py": 0.1,
    "quick_3.py": 0.1,
    "quick_4.py": 0.1,
}

# Sleeps each file's time and reports it where the agent looks for per-file durations.
RUNNER = """
report="$INFRAX_REPORT_DIR/durations.json"
printf '{' > "$report"; sep=""
for file in "$@"; do
  case "$file" in slow_*) seconds=0.4 ;; *) seconds=0.1 ;; esac
  sleep "$seconds"
  printf '%s"%s": %s' "$sep" "$file" "$seconds" >> "$report"; sep=", "
done
printf '}' >> "$report"
"""


async def test_second_run_is_balanced_by_what_the_first_taught(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    runner = script(tmp_path, "runner.sh", RUNNER)
    definition = task("suite", runner, list(DURATIONS), partitions=2)

    first = await infrax.wait_request((await infrax.submit([definition], project="demo"))["id"])
    assert first.state == "completed"
    first_split = [sorted(p.files) for p in first.tasks[0].partitions]
    assert first_split[0] == ["quick_1.py", "slow_1.py", "slow_2.py"], "without history: contiguous chunks"
    for _ in range(100):  # learning happens on the bus, after the request is reported complete
        history = (await infrax["optimizer"].get("/api/v1/history", params={"project": "demo", "task": "suite"})).json()
        if len(history) == len(DURATIONS):
            break
        await asyncio.sleep(0.1)
    assert {h["file"]: h["estimate"] for h in history} == DURATIONS

    second = await infrax.wait_request((await infrax.submit([definition], project="demo"))["id"])

    assert second.state == "completed"
    expected = [p.expected_duration for p in second.tasks[0].partitions]
    assert expected == pytest.approx([0.6, 0.6]), (
        "the plan should put one slow file and two quick ones in each partition"
    )
    slow_per_partition = [sum(f.startswith("slow_") for f in p.files) for p in second.tasks[0].partitions]
    assert slow_per_partition == [1, 1] and [len(p.files) for p in second.tasks[0].partitions] == [3, 3]
