"""The bus contract (infrax.bus.base.Bus), checked on every implementation; RabbitMQ restarts last."""

from __future__ import annotations

import asyncio
import inspect
import json
import shutil
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from infrax.bus import Bus, BusError, Message, topics
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import RunStatus
from infrax.bus.rabbitmq import RabbitMQBus
from tests.bus.conftest import Inbox, Raw, event
from tests.conftest import rabbitmqctl, unavailable

EX = topics.CONTAINERS
Name = Callable[[str], str]

# binding key -> which of KEYS it matches, as RabbitMQ's topic exchanges define it.
KEYS = ["a", "a.b", "a.b.c", "b.a", "x.a.b", "a.x.b"]
BINDINGS = {
    "a.*": {"a.b"},
    "a.#": {"a", "a.b", "a.b.c", "a.x.b"},  # `#` also matches zero words
    "a.#.b": {"a.b", "a.x.b"},
    "#.b": {"a.b", "x.a.b", "a.x.b"},
    "*.a.*": {"x.a.b"},
    "*": {"a"},
    "#": set(KEYS),
    "a.b": {"a.b"},
}


async def test_star_and_hash_routing(bus: Bus, name: Name) -> None:
    word = name("w")  # a first word of this test's own, as far as the broker is concerned
    inboxes = {binding: Inbox() for binding in BINDINGS}
    for i, (binding, inbox) in enumerate(inboxes.items()):
        # `end` comes last on every queue: once it is in, everything routed there is in.
        await bus.subscribe(name(f"c{i}"), EX, [f"{word}.{binding}", f"{word}.end"], inbox, prefetch=1)
    for key in KEYS:
        await bus.publish(EX, f"{word}.{key}", event(key))
    await bus.publish(EX, f"{word}.end", event("end"))
    for binding, inbox in inboxes.items():
        await inbox.wait_for_tag("end")
        assert set(inbox.tags) - {"end"} == BINDINGS[binding], binding
        assert len(inbox.tags) == len(BINDINGS[binding]) + 1, binding


async def test_messages_wait_for_a_cancelled_consumer(bus: Bus, name: Name) -> None:
    first = Inbox()
    subscription = await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], first)
    await subscription.cancel()
    for i in range(3):
        await bus.publish(EX, f"{name('w')}.{i}", event(str(i)))
    second = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], second)
    await second.wait(lambda inbox: len(inbox.messages) == 3)
    assert sorted(second.tags) == ["0", "1", "2"]
    assert first.messages == []


async def test_handlers_of_one_consumer_share_its_messages(bus: Bus, name: Name) -> None:
    class Slow(Inbox):
        async def __call__(self, message: Message) -> None:
            await asyncio.sleep(0.01)
            self.record(message)

    inboxes = [Slow(), Slow()]
    for inbox in inboxes:
        await bus.subscribe(name("c"), EX, [f"{name('w')}.*"], inbox, prefetch=1)
    sent = [str(i) for i in range(20)]
    for tag in sent:
        await bus.publish(EX, f"{name('w')}.{tag}", event(tag))
    # Then one marker per handler: each handler takes one message at a time from the queue in order,
    # so once both markers are in, anything delivered before them (a duplicate, say) is in as well.
    markers = ["end-1", "end-2"]
    for tag in markers:
        await bus.publish(EX, f"{name('w')}.{tag}", event(tag))
    async with asyncio.timeout(10):
        while not set(markers) <= set(inboxes[0].tags + inboxes[1].tags):
            await asyncio.sleep(0.01)
    got = [tag for inbox in inboxes for tag in inbox.tags if tag not in markers]
    assert sorted(got) == sorted(sent)
    assert inboxes[0].messages and inboxes[1].messages


async def test_a_failed_handler_gets_the_message_again(bus: Bus, name: Name) -> None:
    seen: list[tuple[str, bool]] = []
    inbox = Inbox()

    async def flaky(message: Message) -> None:
        seen.append((message.body["containerId"], message.redelivered))
        if len(seen) == 1:
            raise RuntimeError("the handler's effect did not happen")
        await inbox(message)

    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], flaky)
    await bus.publish(EX, f"{name('w')}.x", event("x"))
    await inbox.wait_for_tag("x")
    assert seen == [("x", False), ("x", True)]


async def test_a_message_whose_consumer_left_before_acking_is_delivered_again(bus: Bus, name: Name) -> None:
    started = Inbox()

    async def stuck(message: Message) -> None:
        started.record(message)
        await asyncio.Event().wait()  # the process dies before the effect is committed

    subscription = await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], stuck)
    await bus.publish(EX, f"{name('w')}.x", event("x"))
    await started.wait_for_tag("x")
    await subscription.cancel()
    again = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], again)
    await again.wait_for_tag("x")
    assert [(m.body, m.redelivered) for m in again.messages] == [(started.messages[0].body, True)]
    assert started.messages[0].redelivered is False


async def test_acks_never_cover_a_message_still_being_handled(bus: Bus, name: Name) -> None:
    # RabbitMQ acks handled messages together (`multiple`) where it can: never past one in hand.
    slow_started, handled = Inbox(), Inbox()

    async def handler(message: Message) -> None:
        if message.body["containerId"] == "slow":
            slow_started.record(message)
            await asyncio.Event().wait()  # the process dies before this one's effect is committed
        await handled(message)

    subscription = await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], handler, prefetch=16)
    fast = [f"fast-{i}" for i in range(5)]
    for tag in ["slow", *fast]:
        await bus.publish(EX, f"{name('w')}.{tag}", event(tag))
    await slow_started.wait_for_tag("slow")
    for tag in fast:
        await handled.wait_for_tag(tag)
    await subscription.cancel()  # acks what was handled, hands back what was not
    # Published after the cancel, so queued behind whatever went back to the queue.
    await bus.publish(EX, f"{name('w')}.end", event("end"))
    again = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], again, prefetch=1)
    await again.wait_for_tag("end")
    assert [(m.body["containerId"], m.redelivered) for m in again.messages] == [("slow", True), ("end", False)]


async def test_a_message_carries_its_body_key_exchange_and_headers(bus: Bus, name: Name) -> None:
    inbox = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], inbox)
    body = event("x")
    await bus.publish(EX, f"{name('w')}.x.y", body, headers={"trace": "abc"})
    await inbox.wait_for_tag("x")
    [message] = inbox.messages
    assert (message.exchange, message.routing_key, message.body) == (EX, f"{name('w')}.x.y", body)
    assert message.headers.get("trace") == "abc"
    assert message.redelivered is False


INVALID_ON_RECEIPT = {
    "not-json": b"{not json",
    "not-an-object": b"[1, 2]",
    "missing-field": json.dumps({"kind": "container-event", "version": 1, "containerType": "t"}).encode(),
    "wrong-kind": json.dumps(
        RunStatus(
            run_id="r",
            partition_id="p",
            task_id="t",
            request_id="q",
            job_id=None,
            run=0,
            container_type="t",
            state="running",
        ).wire()
    ).encode(),
    "future-version": json.dumps({**event("v"), "version": 2}).encode(),
}


async def test_an_invalid_message_is_dead_lettered_and_the_consumer_goes_on(
    bus: Bus, raw: Raw, name: Name, caplog: pytest.LogCaptureFixture
) -> None:
    inbox = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], inbox)
    await bus.publish(EX, f"{name('w')}.before", event("before"))
    for label, data in INVALID_ON_RECEIPT.items():
        await raw.publish(EX, f"{name('w')}.{label}", data)
    await bus.publish(EX, f"{name('w')}.after", event("after"))
    await inbox.wait_for_tag("after")
    assert sorted(inbox.tags) == ["after", "before"]

    expected = {(f"{name('w')}.{label}", data) for label, data in INVALID_ON_RECEIPT.items()}
    async with asyncio.timeout(5):
        while not expected <= set(await raw.dead_letters()):
            await asyncio.sleep(0.05)
    dead_letter_lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(dead_letter_lines) == len(INVALID_ON_RECEIPT)


async def test_a_message_with_a_field_of_a_newer_release_is_consumed(bus: Bus, raw: Raw, name: Name) -> None:
    inbox = Inbox()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], inbox)
    current = event("newer")
    await raw.publish(EX, f"{name('w')}.newer", json.dumps({**current, "addedInV1_9": {"optional": True}}).encode())
    await inbox.wait_for_tag("newer")
    assert inbox.messages[0].body == current, "the unknown field is dropped, the rest is as sent"


async def test_a_poison_message_is_dead_lettered_after_its_deliveries_while_others_flow(
    bus: Bus, raw: Raw, name: Name
) -> None:
    tries: list[int] = []
    inbox = Inbox()

    async def handler(message: Message) -> None:
        if message.body["containerId"] == "poison":
            tries.append(1)
            raise RuntimeError("this handler always fails on this message")
        inbox.record(message)

    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], handler)
    await bus.publish(EX, f"{name('w')}.poison", event("poison"))
    for i in range(20):
        await bus.publish(EX, f"{name('w')}.ok", event(f"ok{i}"))
    await inbox.wait(lambda i: len(i.messages) == 20)
    async with asyncio.timeout(20):
        while not any(key == f"{name('w')}.poison" for key, _ in await raw.dead_letters()):
            await asyncio.sleep(0.05)
    assert len(tries) == 8, "delivered max_deliveries (8) times in all, then dead-lettered"
    await bus.publish(EX, f"{name('w')}.ok", event("after"))
    await inbox.wait_for_tag("after")  # the consumer goes on
    assert len(tries) == 8


@pytest.mark.parametrize(
    ("exchange", "body"),
    [
        pytest.param(EX, {**event("x"), "containerType": 3}, id="wrong-type"),
        pytest.param(EX, {k: v for k, v in event("x").items() if k != "containerType"}, id="missing-field"),
        pytest.param(EX, {**event("x"), "extra": 1}, id="unknown-field"),
        pytest.param(EX, {**event("x"), "version": 2}, id="unknown-version"),
        pytest.param(EX, {k: v for k, v in event("x").items() if k != "kind"}, id="no-kind"),
        pytest.param(
            EX, {"container_type" if k == "containerType" else k: v for k, v in event("x").items()}, id="snake-case"
        ),
        pytest.param(EX, {**event("x"), "timestamp": datetime.now()}, id="not-json"),
        pytest.param(topics.JOBS, event("x"), id="kind-not-on-exchange"),
        pytest.param("exchange/infrax/v1/no-such-thing", event("x"), id="unknown-exchange"),
    ],
)
async def test_publishing_an_invalid_body_raises(bus: Bus, exchange: str, body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        await bus.publish(exchange, "a.b", body)


async def test_publishes_at_once_arrive_in_order_and_a_bad_one_fails_alone(bus: Bus, name: Name) -> None:
    # RabbitMQ sends what is published in one event-loop turn as one batch: it must keep the order,
    # and one invalid body must not take the others down with it.
    word, inbox = name("w"), Inbox()
    await bus.subscribe(name("c"), EX, [f"{word}.#"], inbox, prefetch=1)
    bodies = [event(str(i)) if i != 50 else {**event("bad"), "version": 2} for i in range(300)]
    results = await asyncio.gather(
        *(bus.publish(EX, f"{word}.{i}", body) for i, body in enumerate(bodies)), return_exceptions=True
    )
    assert isinstance(results[50], ValueError)
    assert [r for i, r in enumerate(results) if i != 50] == [None] * 299
    await inbox.wait(lambda inbox: len(inbox.messages) == 299)
    assert inbox.tags == [str(i) for i in range(300) if i != 50]


async def test_publish_all_sends_in_order_or_nothing_when_one_is_bad(bus: Bus, name: Name) -> None:
    word, inbox = name("w"), Inbox()
    await bus.subscribe(name("c"), EX, [f"{word}.#"], inbox, prefetch=1)
    with pytest.raises(ValueError):
        await bus.publish_all([(EX, f"{word}.ok", event("ok")), (EX, f"{word}.bad", {**event("bad"), "version": 2})])
    await bus.publish_all((EX, f"{word}.{i}", event(str(i))) for i in range(100))
    await inbox.wait(lambda inbox: len(inbox.messages) == 100)
    assert inbox.tags == [str(i) for i in range(100)]


async def test_the_treeherder_exchange_takes_any_object(bus: Bus, name: Name) -> None:
    inbox = Inbox()
    await bus.subscribe(name("c"), topics.TREEHERDER, [f"{name('w')}.#"], inbox)
    await bus.publish(topics.TREEHERDER, f"{name('w')}.x", {"containerId": "x", "anything": [1, {"b": None}]})
    await inbox.wait_for_tag("x")
    with pytest.raises(ValueError):
        await bus.publish(topics.TREEHERDER, f"{name('w')}.x", ["not", "an", "object"])  # type: ignore[arg-type]


async def test_subscribing_to_an_unknown_exchange_raises(bus: Bus, name: Name) -> None:
    with pytest.raises(ValueError):
        await bus.subscribe(name("c"), "exchange/infrax/v1/no-such-thing", ["#"], Inbox())


async def test_waiting_counts_what_the_consumers_have_not_taken_yet(bus: Bus, name: Name) -> None:
    release, inbox = asyncio.Event(), Inbox()

    async def held(message: Message) -> None:
        await release.wait()
        await inbox(message)

    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], held, prefetch=1)
    for i in range(5):
        await bus.publish(EX, f"{name('w')}.{i}", event(str(i)))
    async with asyncio.timeout(10):
        while await bus.waiting() != 4:  # one is in the handler's hands, four wait
            await asyncio.sleep(0.01)
    release.set()
    await inbox.wait(lambda got: len(got.messages) == 5)

    assert await bus.waiting() == 0


@pytest.mark.parametrize("method", ["start", "close", "publish", "publish_all", "subscribe", "waiting"])
def test_implementations_have_the_interface_signatures(method: str) -> None:
    expected = inspect.signature(getattr(Bus, method))
    for implementation in (MemoryBus, RabbitMQBus):
        assert inspect.signature(getattr(implementation, method)) == expected, implementation


# -- RabbitMQ only -------------------------------------------------------------------------


async def test_rabbitmq_start_gives_up_with_bus_error() -> None:
    bus = RabbitMQBus("amqp://guest:guest@127.0.0.1:1/", retry_for=0.5)
    with pytest.raises(BusError):
        await bus.start()
    with pytest.raises(BusError):
        await bus.publish(EX, "a", event("x"))  # not started


async def test_rabbitmq_restart_loses_nothing_and_the_consumer_resumes(rabbitmq_url: str, name: Name) -> None:
    if shutil.which("rabbitmqctl") is None:
        unavailable("restarting RabbitMQ needs rabbitmqctl")
    bus = RabbitMQBus(rabbitmq_url, reconnect_interval=0.5)
    await bus.start()

    gone = asyncio.Event()

    class Held(Inbox):  # the first deliveries are still unacked when the broker goes
        async def __call__(self, message: Message) -> None:
            if not message.redelivered:
                await asyncio.wait_for(gone.wait(), 10)
            self.record(message)

    inbox = Held()
    await bus.subscribe(name("c"), EX, [f"{name('w')}.#"], inbox, prefetch=5)
    tags = [f"m{i}" for i in range(60)]

    async def publish(batch: list[str]) -> None:
        for tag in batch:
            await bus.publish(EX, f"{name('w')}.{tag}", event(tag))

    stopped = False
    try:
        await publish(tags[:20])
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        stopped = True
        gone.set()
        during = asyncio.create_task(publish(tags[20:40]))  # waits the outage out
        await asyncio.sleep(0.5)
        assert not during.done()
        await asyncio.to_thread(rabbitmqctl, "start_app")
        stopped = False
        await during
        await publish(tags[40:])
        await inbox.wait(lambda i: set(tags) <= set(i.tags), timeout=20)
    finally:
        if stopped:
            await asyncio.to_thread(rabbitmqctl, "start_app")
        await bus.close()
    assert set(inbox.tags) == set(tags)  # duplicates are allowed (at least once), losses are not
    assert sum(m.redelivered for m in inbox.messages) >= 5  # the unacked ones came back


async def test_a_message_cc_d_to_more_keys_reaches_each_bound_queue_once(bus: Bus, name: Name) -> None:
    """Taskcluster's queue CCs each task route (`route.<route>`): one message, routed by every key."""
    word = name("w")
    exchange = topics.TC_EXCHANGES[1]
    by_primary, by_route, by_both, by_neither = Inbox(), Inbox(), Inbox(), Inbox()
    await bus.subscribe(name("primary"), exchange, [f"{word}.primary.#", f"{word}.end"], by_primary)
    await bus.subscribe(name("route"), exchange, [f"{word}.route.#", f"{word}.end"], by_route)
    await bus.subscribe(name("both"), exchange, [f"{word}.#"], by_both)
    await bus.subscribe(name("neither"), exchange, [f"{word}.other.#", f"{word}.end"], by_neither)
    cc = {"CC": [f"{word}.route.tc-treeherder.v2.p.r.1"]}
    await bus.publish_encoded([(exchange, f"{word}.primary.t.0", json.dumps({"containerId": "x"}).encode(), cc)])
    await bus.publish(exchange, f"{word}.end", {"containerId": "end"})
    for inbox in (by_primary, by_route, by_both, by_neither):
        await inbox.wait_for_tag("end")
    assert (by_primary.tags, by_route.tags, by_both.tags, by_neither.tags) == (
        ["x", "end"],
        ["x", "end"],
        ["x", "end"],
        ["end"],
    )
