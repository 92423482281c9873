"""Claims go back to the queue: a silent scheduler's at the next beat of another, and those a live
scheduler could not give back (the database went away while it offered) at its next round."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import insert, select

from infrax.bus import Message, topics
from infrax.bus.messages import ContainerEvent
from infrax.http import ServiceError
from infrax.model import OfferAnswer, PartitionOffer, State, utcnow
from infrax.scheduler.recovery import HEARTBEAT_TIMEOUT
from infrax.store import StoreError
from infrax.store.tables import partitions, scheduler_instances
from tests.scheduler.conftest import LINUX, Harness, definition


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


@pytest.mark.parametrize("provisioner_answer", ["unavailable", "full"])
async def test_claims_left_by_a_database_outage_during_an_offer_are_offered_again(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, provisioner_answer: str
) -> None:
    request = await harness.submit(definition(files=2))
    ids = {p.id for p in request.tasks[0].partitions}
    played = harness.provisioner.offer
    db = harness.scheduler.db
    working = db.each_alone

    @contextlib.asynccontextmanager
    async def away() -> AsyncIterator[None]:
        raise StoreError("database unreachable: the test stopped it")
        yield

    async def offer_while_the_database_goes_away(offers: list[PartitionOffer]) -> list[OfferAnswer]:
        monkeypatch.setattr(db, "each_alone", away)
        if provisioner_answer == "unavailable":
            raise ServiceError("provisioner", 503, "starting")
        return [OfferAnswer(run_id=o.run_id, accepted=False, reason="full") for o in offers]

    monkeypatch.setattr(harness.provisioner, "offer", offer_while_the_database_goes_away)
    with pytest.raises((StoreError, ServiceError)):
        await harness.scheduler.dispatch_batch()
    async with db.begin() as conn:
        claims = dict((await conn.execute(select(partitions.c.id, partitions.c.claimed_by))).all())
    assert set(claims.values()) == {harness.scheduler.instance}, "the claims outlived the offer"

    monkeypatch.setattr(db, "each_alone", working)  # the database is back
    monkeypatch.setattr(harness.provisioner, "offer", played)
    freed = ContainerEvent(event="free", container_type=LINUX.name, count=2)
    await harness.scheduler._on_capacity(Message(topics.CONTAINERS, "free", freed.model_dump(mode="json")))
    await harness.dispatch()

    assert {o.partition_id for o in harness.provisioner.offers} == ids
    async with db.begin() as conn:
        rows = (await conn.execute(select(partitions.c.state, partitions.c.claimed_by))).all()
    assert rows == [(State.DISPATCHED, None)] * 2
