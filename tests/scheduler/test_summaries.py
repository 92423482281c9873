"""The push list's view of many requests: each task with its partitions as chunks, from one query
that the database aggregates (SQLite and PostgreSQL each their own way)."""

from __future__ import annotations

import json

from infrax.model import State
from infrax.scheduler.summaries import RequestSummary, summaries_json
from tests.scheduler.conftest import Harness, definition


async def test_each_request_lists_its_tasks_by_position_and_their_chunks_by_number(harness: Harness) -> None:
    first = await harness.submit(definition("unit", files=12), definition("lint", files=1))
    second = await harness.submit(definition("docs", files=2))
    unit = next(t for t in first.tasks if t.name == "unit")
    failing = next(p for p in unit.partitions if p.index == 11)
    await harness.force(failing.id, state=State.FAILED.value, run=2)

    found = json.loads(await summaries_json(harness.scheduler.db, [second.id, first.id, "0" * 32, first.id]))

    assert set(found) == {first.id, second.id}  # an unknown request is left out, a repeated one is there once
    summary = RequestSummary.model_validate(found[first.id])
    assert [t.name for t in summary.tasks] == ["unit", "lint"]
    chunks = next(t for t in summary.tasks if t.name == "unit").chunks
    assert [c[1] for c in chunks] == list(range(1, 13))  # by chunk number: 10 after 9, not after 1
    assert {p.id: p.index for p in unit.partitions} == {c[0]: c[1] for c in chunks}
    assert chunks[10] == (failing.id, 11, State.FAILED, 2)
    assert all(c[2] == State.QUEUED and c[3] == 0 for c in chunks if c[0] != failing.id)
    assert [len(t.chunks) for t in RequestSummary.model_validate(found[second.id]).tasks] == [2]


async def test_a_task_not_yet_planned_has_no_chunks(harness: Harness) -> None:
    request = await harness.submit(definition("build"), definition("unit", files=3, dependsOn=["build"]))
    found = json.loads(await summaries_json(harness.scheduler.db, [request.id]))
    tasks = {t.name: t for t in RequestSummary.model_validate(found[request.id]).tasks}
    assert len(tasks["build"].chunks) == 1
    assert tasks["unit"].chunks == [] and tasks["unit"].state == State.PENDING
