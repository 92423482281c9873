"""The takeover's one statement, on each backend: the runs in flight of a silent executioner go to
the one that beats, each once; an ended run, or a run of a live executioner, stays where it is."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update

from infrax.executioner.takeover import SILENT_AFTER, Takeover
from infrax.model import utcnow
from infrax.store import Database
from infrax.store.tables import executioner_instances, runs
from tests.agent.conftest import StartAgent
from tests.executioner.conftest import Made, assignment, journal_lines, journal_script


async def test_the_runs_in_flight_of_a_silent_executioner_are_taken_over_once(database: Database) -> None:
    await database.create_schema()
    now = utcnow()
    async with database.begin() as conn:
        await conn.execute(
            insert(executioner_instances),
            [
                {"name": "dead", "heartbeat_at": now - timedelta(seconds=SILENT_AFTER + 1)},
                {"name": "slow-but-alive", "heartbeat_at": now},
            ],
        )
        await conn.execute(
            insert(runs),
            [
                _run("r-running", "dead", "running"),
                _run("r-accepted", "dead", "accepted"),
                _run("r-ended", "dead", "completed"),
                _run("r-alive", "slow-but-alive", "running"),
            ],
        )
    adopted: list[list[Any]] = []

    async def adopt(rows: list[Any]) -> None:
        adopted.append(rows)

    taker = Takeover(database, "taker", adopt, lambda run_id: f"/logs/{run_id}.log")
    await taker.beat()
    await taker.beat()  # nothing is left to take: the second beat takes nothing

    assert [sorted(row["run_id"] for row in rows) for rows in adopted] == [["r-accepted", "r-running"]]
    async with database.begin() as conn:
        held = {r.run_id: (r.executioner, r.log_path) for r in await conn.execute(select(runs))}
        beating = set((await conn.execute(select(executioner_instances.c.name))).scalars())
    assert held == {
        "r-running": ("taker", "/logs/r-running.log"),
        "r-accepted": ("taker", "/logs/r-accepted.log"),
        "r-ended": ("dead", "/old/r-ended.log"),
        "r-alive": ("slow-but-alive", "/old/r-alive.log"),
    }
    assert "taker" in beating


def _run(run_id: str, executioner: str, state: str) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "partition_id": run_id,
        "executioner": executioner,
        "assignment": {},
        "state": state,
        "log_path": f"/old/{run_id}.log",
        "created_at": utcnow(),
    }


async def test_an_executioner_whose_run_was_taken_over_records_no_end_of_it(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    """It was only slow: another took its run meanwhile. The run's end is the taker's to record."""
    agent = await start_agent()
    gate = tmp_path / "gate"
    script, journal = journal_script(
        tmp_path, f"while [ ! -f {gate} ]; do sleep 0.05; done\necho done >> {tmp_path / 'journal'}\n"
    )
    slow = await made.executioner("slow")
    work = assignment(agent, script)
    await slow.execute([work])
    async with asyncio.timeout(20):
        while not journal_lines(journal):
            await asyncio.sleep(0.05)
    async with made.db.begin() as conn:  # what the taker's UPDATE does
        await conn.execute(update(runs).where(runs.c.run_id == work.offer.run_id).values(executioner="taker"))

    gate.touch()
    await slow.finished(work.offer.run_id)

    assert journal_lines(journal)[-1] == "done"  # the run ended in its agent ...
    async with made.db.begin() as conn:
        row = (await conn.execute(select(runs).where(runs.c.run_id == work.offer.run_id))).mappings().one()
    assert (row["executioner"], row["state"]) == ("taker", "accepted")  # ... and the slow one stored nothing
    assert [s for s in made.of(work.offer.run_id) if s != "running"] == []  # nor published an end
