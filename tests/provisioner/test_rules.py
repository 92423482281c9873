"""Container types' rules and provider priorities, on real agent processes.

min_warm kept, idle_timeout retires spare idle containers, max_partitions and max_age replace
containers, max_concurrent caps a type; the first provider with room takes a partition, a full or
failing one falls through to the next, and when none is left the offer is rejected with a reason.
"""

from __future__ import annotations

from infrax.model import ContainerState, ContainerType

from .conftest import FlakyProvider, MakeHarness, ManualClock, make_offer, settled, wait_for


async def _busy(made, offer) -> str:  # type: ignore[no-untyped-def]
    """The container the offer's run was handed to, once it was."""
    found = await wait_for(
        lambda: [a for a in made.executioner.assignments if a.offer.run_id == offer.run_id],
        what=f"run {offer.run_id} handed over",
    )
    return str(found[0].container_id)


async def test_min_warm_containers_are_kept_started_and_idle(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=2, max_concurrent=4)
    made = await harness([linux])

    idle = await wait_for(
        lambda: len(made.slots(ContainerState.IDLE)) == 2 and made.slots(ContainerState.IDLE),
        what="two warm containers",
    )
    await settled(made)  # a further round of maintenance starts no more
    assert len(made.provisioner.slots) == 2  # no more than min_warm
    # Taking one makes room below min_warm: another is started, the taken one stays busy.
    made.provisioner.offer([make_offer()])
    await wait_for(
        lambda: len(made.slots(ContainerState.IDLE)) == 2 and len(made.slots(ContainerState.BUSY)) == 1,
        what="the pool refilled",
    )
    assert {s.id for s in idle} & {s.id for s in made.slots(ContainerState.BUSY)}


async def test_idle_timeout_retires_spare_idle_containers_down_to_min_warm(harness: MakeHarness) -> None:
    clock = ManualClock()
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=3, idle_timeout=60)
    made = await harness([linux], clock=clock)
    offers = [make_offer() for _ in range(3)]
    assert all(a.accepted for a in made.provisioner.offer(offers))
    containers = [await _busy(made, o) for o in offers]
    assert len(set(containers)) == 3

    for container_id, offer in zip(containers, offers, strict=True):
        await made.provisioner.release(container_id, offer.run_id, healthy=True)
    clock.advance(59)
    await settled(made)
    assert len(made.provisioner.slots) == 3, "retired before their idle timeout"

    clock.advance(1)
    await settled(made)
    assert [s.state for s in made.provisioner.slots.values()] == [ContainerState.IDLE]
    # A retired container leaves the pool first, then its "stopped" event goes out.
    assert sum(e.event == "stopped" for e in made.events) == 2


async def test_max_partitions_replaces_a_container_after_its_last_partition(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=2, max_partitions=2)
    made = await harness([linux])
    first = (await wait_for(lambda: made.slots(ContainerState.IDLE), what="a warm container"))[0]

    for n in range(2):
        offer = make_offer()
        made.provisioner.offer([offer])
        assert await _busy(made, offer) == first.id
        await made.provisioner.release(first.id, offer.run_id, healthy=True)
        assert first.partitions_run == n + 1

    assert first.id not in made.provisioner.slots  # worn out after 2 partitions
    assert not await first.provider.alive(first.id)
    replacement = (await wait_for(lambda: made.slots(ContainerState.IDLE), what="a replacement"))[0]
    assert replacement.id != first.id and replacement.partitions_run == 0


async def test_max_age_replaces_idle_containers_and_busy_ones_when_released(harness: MakeHarness) -> None:
    clock = ManualClock()
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=2, max_age=600)
    made = await harness([linux], clock=clock)
    first = (await wait_for(lambda: made.slots(ContainerState.IDLE), what="a warm container"))[0]
    clock.advance(599)
    await settled(made)
    assert first.id in made.provisioner.slots, "retired before its max_age"
    clock.advance(1)
    await settled(made)
    assert first.id not in made.provisioner.slots, "the old idle one was not retired"
    second = (await wait_for(lambda: made.slots(ContainerState.IDLE), what="its replacement"))[0]
    assert second.id != first.id

    offer = make_offer()
    made.provisioner.offer([offer])
    assert await _busy(made, offer) == second.id
    clock.advance(600)
    await settled(made)
    assert made.provisioner.slots[second.id].state == ContainerState.BUSY  # a busy one is not taken away
    await made.provisioner.release(second.id, offer.run_id, healthy=True)
    assert second.id not in made.provisioner.slots


async def test_max_concurrent_caps_a_type(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=2)
    made = await harness([linux])

    answers = made.provisioner.offer([make_offer() for _ in range(3)])

    assert [a.accepted for a in answers] == [True, True, False]
    assert "at its maximum of 2 containers" in (answers[2].reason or "")
    assert made.provisioner.capacity() == {"linux": 0}
    assert made.provisioner.rejections[("linux", "max_concurrent")] == 1


async def test_first_provider_with_room_takes_the_partition_then_the_next(harness: MakeHarness) -> None:
    first, second = harness.provider("first", capacity=1), harness.provider("second", capacity=2)  # type: ignore[attr-defined]
    linux = ContainerType(name="linux", tags=["linux"], providers=["first", "second"], max_concurrent=10)
    made = await harness([linux], [first, second])
    assert made.provisioner.capacity() == {"linux": 3}

    offers = [make_offer() for _ in range(4)]
    answers = made.provisioner.offer(offers)

    assert [a.accepted for a in answers] == [True, True, True, False]
    assert answers[3].reason == "every provider of linux is full or failing (first: 1/1; second: 2/2)"
    containers = [await _busy(made, o) for o in offers[:3]]
    by_provider = [made.provisioner.slots[c].provider.name for c in containers]
    assert by_provider == ["first", "second", "second"]
    # A container freed on `first` is idle there; the next offer takes the idle one.
    await made.provisioner.release(containers[0], offers[0].run_id, healthy=True)
    later = make_offer()
    assert made.provisioner.offer([later])[0].accepted
    assert await _busy(made, later) == containers[0]


async def test_a_failing_provider_falls_through_to_the_next_and_rests(harness: MakeHarness) -> None:
    clock = ManualClock()
    flaky = harness.provider("flaky", cls=FlakyProvider, failure_backoff=30.0)  # type: ignore[attr-defined]
    steady = harness.provider("steady")  # type: ignore[attr-defined]
    flaky.failing = True
    linux = ContainerType(name="linux", tags=["linux"], providers=["flaky", "steady"], max_concurrent=4)
    made = await harness([linux], [flaky, steady], clock=clock)

    offer = make_offer()
    assert made.provisioner.offer([offer])[0].accepted
    container = await _busy(made, offer)

    assert made.provisioner.slots[container].provider is steady
    assert flaky.attempts == 1 and not made.runs  # not reported lost: it ran elsewhere
    assert not made.provisioner.provider_health["flaky"].usable()
    # While it rests it is not asked at all.
    resting = make_offer()
    made.provisioner.offer([resting])
    assert made.provisioner.slots[await _busy(made, resting)].provider is steady
    assert flaky.attempts == 1
    # After its rest it is tried again, and a success ends its failing streak.
    flaky.failing = False
    clock.advance(29.9)
    assert not made.provisioner.provider_health["flaky"].usable()
    clock.advance(0.1)
    again = make_offer()
    made.provisioner.offer([again])
    assert made.provisioner.slots[await _busy(made, again)].provider is flaky
    assert made.provisioner.provider_health["flaky"].failures == 0


async def test_when_every_provider_fails_the_run_is_lost_and_offers_are_rejected(harness: MakeHarness) -> None:
    one = harness.provider("one", cls=FlakyProvider, failure_backoff=30)  # type: ignore[attr-defined]
    two = harness.provider("two", cls=FlakyProvider, failure_backoff=30)  # type: ignore[attr-defined]
    one.failing = two.failing = True
    linux = ContainerType(name="linux", tags=["linux"], providers=["one", "two"], max_concurrent=4)
    made = await harness([linux], [one, two])

    offer = make_offer()
    assert made.provisioner.offer([offer])[0].accepted
    lost = await wait_for(lambda: made.runs, what="the run reported lost")

    assert lost[0].state == "exception" and lost[0].run_id == offer.run_id
    assert "one is out of order" in (lost[0].message or "") and "two is out of order" in (lost[0].message or "")
    assert (one.attempts, two.attempts) == (1, 1)
    answer = made.provisioner.offer([make_offer()])[0]
    assert not answer.accepted
    assert "one: 0/∞, failing, resting" in (answer.reason or "") and "two: 0/∞, failing" in (answer.reason or "")
    assert made.provisioner.capacity() == {"linux": 0}


async def test_containers_freed_together_are_announced_in_one_event(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=3)
    made = await harness([linux])
    offers = [make_offer() for _ in range(3)]
    assert all(a.accepted for a in made.provisioner.offer(offers))
    containers = [await _busy(made, o) for o in offers]

    # One batch of releases from the executioner, as its release batcher sends them.
    for container_id, offer in zip(containers, offers, strict=True):
        await made.provisioner.release(container_id, offer.run_id, healthy=True)
    free = await wait_for(lambda: [e for e in made.events if e.event == "free"], what="a free event")
    await settled(made)
    assert [(e.container_type, e.count) for e in made.events if e.event == "free"] == [("linux", 3)]
    assert free[0].container_id is None

    # One more later: an event of its own.
    offer = make_offer()
    assert made.provisioner.offer([offer])[0].accepted
    await made.provisioner.release(await _busy(made, offer), offer.run_id, healthy=True)
    await wait_for(lambda: len([e for e in made.events if e.event == "free"]) == 2, what="a second free event")
    assert [e.count for e in made.events if e.event == "free"] == [3, 1]


async def test_a_rerun_of_failures_goes_to_another_container_than_the_one_they_failed_on(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=2)
    made = await harness([linux])
    first = make_offer()
    made.provisioner.offer([first])
    failed_on = await _busy(made, first)
    await made.provisioner.release(failed_on, first.run_id, healthy=True)
    assert made.provisioner.slots[failed_on].state == ContainerState.IDLE

    again = make_offer(partition_id=first.partition_id, run=1, avoid_container=failed_on)
    [answer] = made.provisioner.offer([again])

    assert answer.accepted
    assert await _busy(made, again) != failed_on, "not on the container where it failed"
    assert made.provisioner.slots[failed_on].state == ContainerState.IDLE, "that one stays for others"


async def test_at_the_maximum_the_container_where_it_failed_makes_way_for_a_fresh_one(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=1)
    made = await harness([linux])
    first = make_offer()
    made.provisioner.offer([first])
    failed_on = await _busy(made, first)
    await made.provisioner.release(failed_on, first.run_id, healthy=True)

    again = make_offer(partition_id=first.partition_id, run=1, avoid_container=failed_on)
    [answer] = made.provisioner.offer([again])

    assert answer.accepted
    fresh = await _busy(made, again)
    assert fresh != failed_on
    await wait_for(lambda: failed_on not in made.provisioner.slots, what="the old container retired")
