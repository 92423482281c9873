"""The in-process bus: the embedded default, with the same semantics as RabbitMQ's topic exchanges."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from infrax.bus import schemas
from infrax.bus.base import CC, Bus, DeadLetter, Encoded, Handler, Message, Subscription, topic_matches
from infrax.bus.metrics import BusMetrics
from infrax.retry import delay

log = logging.getLogger(__name__)
ROUTE_STEP = 50  # messages routed between turns of the event loop


@dataclass(frozen=True)
class _Envelope:
    """A message as it waits in a queue: encoded, so each delivery decodes and checks its own copy."""

    exchange: str
    routing_key: str
    data: bytes
    headers: dict[str, Any]
    redelivered: bool = False
    attempt: int = 1  # deliveries so far whose handler failed, plus one
    checked: bool = False  # validated by publish(); only foreign injections need checking on receipt


@dataclass
class _Queue:
    name: str
    bindings: set[tuple[str, str]] = field(default_factory=set)
    messages: deque[_Envelope] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    consumers: int = 0
    room: asyncio.Event = field(default_factory=asyncio.Event)  # set while below the bus's backlog bound


class _MemorySubscription(Subscription):
    def __init__(self, worker: asyncio.Task[None], on_cancel: Callable[[], None] | None = None) -> None:
        self._worker = worker
        self._on_cancel = on_cancel

    async def cancel(self) -> None:
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        if self._on_cancel is not None:
            self._on_cancel()


class MemoryBus(Bus):
    """Queues live as long as the bus object; a message in a handler's hands is requeued on failure.

    Messages refused on receipt are kept in `dead_letters`, RabbitMQ's dead-letter queue here.
    """

    def __init__(self, redelivery_delay: float = 0.1, max_deliveries: int = 8, backlog: int = 10_000) -> None:
        self._queues: dict[str, _Queue] = {}
        # An outbox relay waits while a consumed queue holds this many: what is not yet published
        # stays in the store, not in this process's memory (RabbitMQ keeps its queues on disk).
        self._backlog = backlog
        self._workers: set[asyncio.Task[None]] = set()
        self._redelivery_delay = redelivery_delay
        self._max_deliveries = max_deliveries
        self.dead_letters: list[DeadLetter] = []
        self.metrics = BusMetrics()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        for worker in list(self._workers):
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
    ) -> None:
        self._route(exchange, routing_key, schemas.encode(exchange, body), headers, checked=True)

    async def publish_all(self, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        encoded = [(exchange, key, schemas.encode(exchange, body)) for exchange, key, body in messages]
        for exchange, key, data in encoded:
            self._route(exchange, key, data, checked=True)

    async def publish_encoded(self, messages: Iterable[Encoded]) -> None:
        for n, (exchange, key, data, *headers) in enumerate(messages, 1):
            self._route(exchange, key, data, headers[0] if headers else None, checked=True)
            if n % ROUTE_STEP == 0:
                await asyncio.sleep(0)  # an outbox's round of a thousand: others get the loop between
        for queue in list(self._queues.values()):
            while queue.consumers and len(queue.messages) >= self._backlog:
                queue.room.clear()
                await queue.room.wait()

    def _route(
        self, exchange: str, routing_key: str, data: bytes, headers: dict[str, Any] | None = None, checked: bool = False
    ) -> None:
        # Unchecked by default: the tests inject invalid messages here, as a foreign publisher would.
        envelope = _Envelope(exchange, routing_key, data, dict(headers or {}), checked=checked)
        # As RabbitMQ's sender-selected distribution: routed by its key and each CC key, once per queue.
        keys = [routing_key, *envelope.headers.get(CC, [])]
        self.metrics.published.labels(exchange).inc()
        for queue in self._queues.values():
            if any(ex == envelope.exchange and any(topic_matches(b, k) for k in keys) for ex, b in queue.bindings):
                queue.messages.append(envelope)
                queue.ready.set()

    async def waiting(self) -> int:
        return sum(len(queue.messages) for queue in self._queues.values() if queue.consumers)

    async def subscribe(
        self,
        consumer: str,
        exchange: str,
        binding_keys: list[str],
        handler: Handler,
        *,
        prefetch: int = 256,
        ephemeral: bool = False,
    ) -> Subscription:
        schemas.allowed_kinds(exchange)  # refuses an unknown exchange
        queue = self._queues.setdefault(consumer, _Queue(consumer))
        queue.bindings.update((exchange, key) for key in binding_keys)
        worker = asyncio.create_task(self._deliver(queue, handler, prefetch), name=f"bus:{consumer}")
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

        def forget() -> None:
            self._queues.pop(consumer, None)

        return _MemorySubscription(worker, forget if ephemeral else None)

    async def _deliver(self, queue: _Queue, handler: Handler, prefetch: int) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        slots = asyncio.Semaphore(prefetch)
        queue.consumers += 1
        try:
            while True:
                while not queue.messages:
                    queue.ready.clear()
                    await queue.ready.wait()
                await slots.acquire()
                if not queue.messages:  # another handler of the same queue took it
                    slots.release()
                    continue
                envelope = queue.messages.popleft()
                if len(queue.messages) < self._backlog:
                    queue.room.set()
                try:
                    # What publish() checked never left this process: parsing gives each consumer its copy.
                    body = (
                        json.loads(envelope.data)
                        if envelope.checked
                        else schemas.decode(envelope.exchange, envelope.data)
                    )
                except ValueError as e:  # schemas.InvalidMessage
                    slots.release()
                    self._dead_letter(queue, envelope, str(e))
                    continue
                message = Message(
                    envelope.exchange, envelope.routing_key, body, envelope.redelivered, dict(envelope.headers)
                )
                task = asyncio.create_task(self._handle(queue, handler, envelope, message, slots))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
        finally:
            queue.consumers -= 1
            queue.room.set()  # a queue no one consumes holds no publisher back
            # A cancelled consumer hands its unacked messages back to the queue before it is gone.
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def _dead_letter(self, queue: _Queue, envelope: _Envelope, reason: str) -> None:
        log.error(
            "dead-lettered a message of %s on %s %s: %s",
            queue.name,
            envelope.exchange,
            envelope.routing_key,
            reason,
        )
        self.metrics.dead_lettered.labels(queue.name).inc()
        self.dead_letters.append(DeadLetter(queue.name, envelope.exchange, envelope.routing_key, envelope.data, reason))

    async def _handle(
        self,
        queue: _Queue,
        handler: Handler,
        envelope: _Envelope,
        message: Message,
        slots: asyncio.Semaphore,
    ) -> None:
        settled = False
        try:
            await handler(message)
            settled = True
            self.metrics.consumed.labels(queue.name).inc()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self.metrics.handler_failures.labels(queue.name).inc()
            if envelope.attempt >= self._max_deliveries:
                self._dead_letter(queue, envelope, f"handler failed {envelope.attempt} times; the last time: {error!r}")
            else:
                log.warning(
                    "handler of %s failed on %s (delivery %d of %d); retrying: %r",
                    queue.name,
                    message.routing_key,
                    envelope.attempt,
                    self._max_deliveries,
                    error,
                    exc_info=envelope.attempt == 1,
                )
                await asyncio.sleep(delay(envelope.attempt - 1, self._redelivery_delay))
                # To the back of the queue, as RabbitMQ's republished copy: the others go on meanwhile.
                queue.messages.append(replace(envelope, redelivered=True, attempt=envelope.attempt + 1))
                queue.ready.set()
            settled = True
        finally:
            slots.release()
            if not settled:  # the consumer went away while handling it: first in line again
                queue.messages.appendleft(replace(envelope, redelivered=True))
                queue.ready.set()
