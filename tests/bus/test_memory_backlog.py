"""The in-process bus keeps a bounded backlog: a relay publishing faster than a consumer consumes
waits (what is not yet published stays in the store), and a queue no one consumes holds no one back."""

from __future__ import annotations

import asyncio
import json

from infrax.bus import Message, topics
from infrax.bus.memory import MemoryBus


def encoded(n: int) -> list[tuple[str, str, bytes]]:
    return [(topics.TREEHERDER, "k", json.dumps({"n": i}).encode()) for i in range(n)]


async def test_a_relay_waits_while_a_consumed_queue_is_full_and_goes_on_as_it_drains() -> None:
    bus = MemoryBus(backlog=10)
    gate = asyncio.Event()
    seen: list[int] = []

    async def slow(message: Message) -> None:
        await gate.wait()
        seen.append(message.body["n"])

    await bus.subscribe("slow", topics.TREEHERDER, ["#"], slow, prefetch=1)
    publishing = asyncio.create_task(bus.publish_encoded(encoded(25)))
    while len(bus._queues["slow"].messages) < 24:  # all routed; the handler holds the first
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert not publishing.done(), "the publisher went on past the bound"
    gate.set()
    await asyncio.wait_for(publishing, 5)
    assert len(bus._queues["slow"].messages) < 10
    while len(seen) < 25:
        await asyncio.sleep(0.01)
    assert seen == list(range(25))
    await bus.close()


async def test_a_queue_no_one_consumes_holds_no_publisher_back() -> None:
    bus = MemoryBus(backlog=10)
    subscription = await bus.subscribe("gone", topics.TREEHERDER, ["#"], lambda m: asyncio.sleep(0))
    await subscription.cancel()  # a durable queue: it stays, and collects
    await asyncio.wait_for(bus.publish_encoded(encoded(50)), 5)
    assert len(bus._queues["gone"].messages) == 50
    await bus.close()
