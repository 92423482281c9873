"""The `bus` fixture: every contract test runs on the in-process bus and on RabbitMQ.

RabbitMQ is taken from `INFRAX_TEST_AMQP` (default guest@127.0.0.1:5672). When `rabbitmqctl`
is at hand the session gets a fresh virtual host, deleted at the end, so the tests neither
see nor disturb anyone else's queues; without it, point `INFRAX_TEST_AMQP` at a scratch vhost.
An unreachable broker skips the RabbitMQ tests, except under `CI`, where it fails them.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import pytest

from infrax.bus import Bus, Message
from infrax.bus.memory import MemoryBus
from infrax.bus.rabbitmq import DEAD_LETTER_QUEUE, RabbitMQBus


@pytest.fixture(params=["memory", "rabbitmq"])
async def bus(request: pytest.FixtureRequest) -> AsyncIterator[Bus]:
    bus: Bus
    if request.param == "memory":
        bus = MemoryBus(redelivery_delay=0.01)
    else:
        bus = RabbitMQBus(request.getfixturevalue("rabbitmq_url"), reconnect_interval=0.5, redelivery_delay=0.01)
    await bus.start()
    try:
        yield bus
    finally:
        await bus.close()


class Raw:
    """What a foreign publisher and an operator can do: put any bytes on the bus, read dead letters."""

    def __init__(self, bus: Bus, url: str | None) -> None:
        self.bus = bus
        self.url = url
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._channel_: aio_pika.abc.AbstractChannel | None = None
        self._letters: list[tuple[str, bytes]] = []

    async def publish(self, exchange: str, routing_key: str, data: bytes) -> None:
        if isinstance(self.bus, MemoryBus):
            self.bus._route(exchange, routing_key, data)  # the memory bus's unchecked seam
            return
        channel = await self._channel()
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        await target.publish(aio_pika.Message(data, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key)

    async def dead_letters(self) -> list[tuple[str, bytes]]:
        """(routing key, body) of each dead letter so far."""
        if isinstance(self.bus, MemoryBus):
            return [(letter.routing_key, letter.data) for letter in self.bus.dead_letters]
        channel = await self._channel()
        queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
        while (message := await queue.get(no_ack=True, fail=False)) is not None:
            self._letters.append((message.routing_key or "", message.body))
        return list(self._letters)

    async def _channel(self) -> aio_pika.abc.AbstractChannel:
        if self._connection is None:
            assert self.url is not None
            self._connection = await aio_pika.connect(self.url)
        if self._channel_ is None:
            self._channel_ = await self._connection.channel()
        return self._channel_

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()


@pytest.fixture
async def raw(bus: Bus, request: pytest.FixtureRequest) -> AsyncIterator[Raw]:
    url = None if isinstance(bus, MemoryBus) else request.getfixturevalue("rabbitmq_url")
    access = Raw(bus, url)
    try:
        yield access
    finally:
        await access.close()


@pytest.fixture
def name() -> Callable[[str], str]:
    """Consumer names and routing-key words of this test only."""
    test_id = uuid.uuid4().hex[:8]
    return lambda label: f"t{test_id}-{label}"


class Inbox:
    """A handler that records what it is given."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self._changed = asyncio.Event()

    async def __call__(self, message: Message) -> None:
        self.record(message)

    def record(self, message: Message) -> None:
        self.messages.append(message)
        self._changed.set()

    @property
    def tags(self) -> list[str]:
        return [m.body["containerId"] for m in self.messages]

    async def wait(self, done: Callable[[Inbox], bool], timeout: float = 10) -> None:
        async with asyncio.timeout(timeout):
            while not done(self):
                self._changed.clear()
                await self._changed.wait()

    async def wait_for_tag(self, tag: str, timeout: float = 10) -> None:
        await self.wait(lambda inbox: tag in inbox.tags, timeout)


def event(tag: str, **fields: Any) -> dict[str, Any]:
    """A valid body for topics.CONTAINERS, told apart by its `containerId`."""
    from infrax.bus.messages import ContainerEvent

    return ContainerEvent(event="free", container_type="test", container_id=tag, **fields).wire()
