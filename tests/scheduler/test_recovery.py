"""Claims of a scheduler that stopped beating go back to the queue at the next beat of another."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert, select

from infrax.model import utcnow
from infrax.scheduler.recovery import HEARTBEAT_TIMEOUT
from infrax.store.tables import partitions, scheduler_instances
from tests.scheduler.conftest import Harness, definition


async def test_claims_of_a_silent_scheduler_are_released_and_a_live_ones_kept(harness: Harness) -> None:
    request = await harness.submit(definition(files=2))
    dead, alive = (p.id for p in request.tasks[0].partitions)
    now = utcnow()
    async with harness.scheduler.db.begin() as conn:
        await conn.execute(
            insert(scheduler_instances),
            [
                {"id": "dead", "heartbeat_at": now - timedelta(seconds=HEARTBEAT_TIMEOUT + 1)},
                {"id": "alive", "heartbeat_at": now},
            ],
        )
    await harness.force(dead, claimed_by="dead", claimed_at=now)
    await harness.force(alive, claimed_by="alive", claimed_at=now)

    await harness.scheduler.recovery.beat()

    async with harness.scheduler.db.begin() as conn:
        claims = dict((await conn.execute(select(partitions.c.id, partitions.c.claimed_by))).all())
    assert claims == {dead: None, alive: "alive"}
    assert HEARTBEAT_TIMEOUT + 1 < 5, "a dead scheduler's claims wait less than 5 s"
