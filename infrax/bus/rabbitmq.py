"""The bus on RabbitMQ (aio-pika): durable topic exchanges, persistent confirmed publishes, dead letters.

Layout on the broker:
- each exchange of `infrax.bus.topics` is a durable topic exchange, declared when the bus connects;
- consumer `<name>` owns the durable queue `infrax.<name>`, bound with its binding keys and
  dead-lettering to the fanout exchange `infrax.dead-letter`, whose durable queue of the same
  name keeps every refused message (with RabbitMQ's `x-death` header saying where from).

The connection is aio-pika's robust one: after a broker restart it reconnects and restores
channels, QoS, declarations, bindings and consumers. Publishing waits for the broker's
confirm and, while the broker is away, retries with backoff for `retry_for` seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.connection import make_url
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, AuthenticationError, ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused
from pamqp.commands import Basic
from yarl import URL

from infrax.background import BackgroundTasks
from infrax.bus import amqp_driver, schemas, topics
from infrax.bus.base import Bus, BusError, Encoded, Handler, Message, Subscription
from infrax.bus.metrics import BusMetrics
from infrax.retry import delay, outage, retry

log = logging.getLogger(__name__)

DEAD_LETTER_EXCHANGE = "infrax.dead-letter"
DEAD_LETTER_QUEUE = "infrax.dead-letter"
QUEUE_PREFIX = "infrax."

T = TypeVar("T")

# Headers of a message the bus itself sent again (its handler failed) or dead-lettered.
ATTEMPT = "x-infrax-delivery"
ORIGIN_EXCHANGE = "x-infrax-exchange"
ORIGIN_ROUTING_KEY = "x-infrax-routing-key"
DEAD_QUEUE = "x-infrax-queue"
DEAD_ERROR = "x-infrax-error"

# Refusals that no retry will change; everything else a driver raises may be the broker restarting.
_PERMANENT = (AuthenticationError, ChannelAccessRefused, ChannelPreconditionFailed)
_TRANSIENT = (*CONNECTION_EXCEPTIONS, asyncio.TimeoutError)
_FIRST_DELAY, _MAX_DELAY = 0.1, 1.0
PERSISTENT = 2  # AMQP delivery mode
CLOSE_FLUSH_TIMEOUT = 5.0


def _properties(headers: dict[str, Any] | None = None) -> Basic.Properties:
    return Basic.Properties(content_type="application/json", delivery_mode=PERSISTENT, headers=headers)


_PLAIN = _properties()  # shared by every message without headers: marshalling only reads it

amqp_driver.apply()


class _OutageOnly(logging.Filter):
    """The driver's own lines about a lost connection (a traceback, then one per reconnect attempt
    each second) say what `infrax.retry.Outage` says once: kept at debug level only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL or log.isEnabledFor(logging.DEBUG)


for _name in (
    "aiormq.connection",
    "aiormq.channel",
    "aio_pika.connection",
    "aio_pika.robust_connection",
    "aio_pika.channel",
    "aio_pika.robust_channel",
    "aio_pika.queue",
    "aio_pika.tools",
):
    logging.getLogger(_name).addFilter(_OutageOnly())


def queue_name(consumer: str, prefix: str = QUEUE_PREFIX) -> str:
    """The durable queue that consumer name `consumer` owns."""
    return f"{prefix}{consumer}"


class RabbitMQBus(Bus):
    def __init__(
        self,
        url: str,
        *,
        retry_for: float = 30.0,
        reconnect_interval: float = 1.0,
        redelivery_delay: float = 0.1,
        max_deliveries: int = 8,
    ) -> None:
        # `?queue_prefix=…` in the URL lets several installations (or test runs) share a vhost.
        parsed = URL(url)
        self._queue_prefix = parsed.query.get("queue_prefix", QUEUE_PREFIX)
        self._url = str(parsed.without_query_params("queue_prefix")) if "queue_prefix" in parsed.query else url
        self._retry_for = retry_for
        self._reconnect_interval = reconnect_interval
        self._redelivery_delay = redelivery_delay
        self._max_deliveries = max_deliveries
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None  # publishes, with confirms
        self._exchanges: dict[str, AbstractExchange] = {}
        self._subscriptions: set[_RabbitSubscription] = set()
        self._outbox: list[tuple[amqp_driver.Outgoing, asyncio.Future[None]]] = []
        self._sending = BackgroundTasks()
        self._closing = False
        self.metrics = BusMetrics()

    def __repr__(self) -> str:
        url = URL(self._url)
        return f"RabbitMQBus({str(url.with_password('***') if url.password else url)!r})"

    async def start(self) -> None:
        if self._connection is None:
            self._connection, self._channel = await self._retrying(f"connecting to {self!r}", self._connect)

    async def close(self) -> None:
        self._closing = True
        for subscription in list(self._subscriptions):
            await subscription.cancel()
        self._send_outbox()
        try:  # what was published before the close still goes out, if the broker answers soon
            await asyncio.wait_for(self._sending.wait(), CLOSE_FLUSH_TIMEOUT)
        except TimeoutError:
            await self._sending.cancel()
        connection, self._connection, self._channel = self._connection, None, None
        self._exchanges.clear()
        if connection is not None:
            await connection.close()

    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
    ) -> None:
        await self._enqueue(exchange, routing_key, schemas.encode(exchange, body), headers)

    async def publish_all(self, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        encoded = [(exchange, key, schemas.encode(exchange, body)) for exchange, key, body in messages]
        await asyncio.gather(*(self._enqueue(exchange, key, data) for exchange, key, data in encoded))

    async def publish_encoded(self, messages: Iterable[Encoded]) -> None:
        await asyncio.gather(
            *(
                self._enqueue(exchange, key, data, headers[0] if headers else None)
                for exchange, key, data, *headers in messages
            )
        )

    def _enqueue(
        self, exchange: str, routing_key: str, data: bytes, headers: dict[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Queue a checked message for the broker; the future is done once the broker confirmed it.

        Whatever is queued in one turn of the event loop goes to the broker together (see
        `amqp_driver.publish_confirmed`), in the order queued. Confirmed means on disk in every
        bound queue.
        """
        self._started()
        properties = _properties(headers) if headers else _PLAIN
        confirmed = asyncio.get_running_loop().create_future()
        # Read once here: `publish_all` raises the first failure of a batch, and asyncio would
        # otherwise log the others, all the same failure, as never retrieved.
        confirmed.add_done_callback(_retrieve_exception)
        if not self._outbox:
            asyncio.get_running_loop().call_soon(self._send_outbox)
        self._outbox.append((amqp_driver.Outgoing(exchange, routing_key, data, properties), confirmed))
        return confirmed

    def _send_outbox(self) -> None:
        batch, self._outbox = self._outbox, []
        if batch:
            self._sending.spawn(self._send(batch), name="bus-publish")

    async def _send(self, batch: list[tuple[amqp_driver.Outgoing, asyncio.Future[None]]]) -> None:
        channel = self._channel
        messages = [message for message, _ in batch]
        exchanges = {m.exchange for m in messages}

        async def attempt() -> None:
            if channel is None:
                raise BusError(f"{self!r} closed before the messages went out")
            # The default exchange and the dead-letter one are the broker's or declared at connect.
            for exchange in exchanges - self._exchanges.keys() - {"", DEAD_LETTER_EXCHANGE}:
                self._exchanges[exchange] = await channel.declare_exchange(
                    exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
            underlay = cast(aiormq.Channel, await channel.get_underlay_channel())
            await amqp_driver.publish_confirmed(underlay, messages)

        try:
            await self._retrying(f"publishing {len(messages)} messages to {', '.join(sorted(exchanges))}", attempt)
        except BaseException as error:
            for message, confirmed in batch:
                self.metrics.publish_failures.labels(message.exchange).inc()
                if not confirmed.done():
                    confirmed.set_exception(error if isinstance(error, Exception) else BusError(repr(error)))
            if not isinstance(error, Exception):
                raise
        else:
            for message, confirmed in batch:
                self.metrics.published.labels(message.exchange).inc()
                if not confirmed.done():
                    confirmed.set_result(None)

    async def waiting(self) -> int:
        # A channel of its own: asked on the publishing one, passive declares kept answering a
        # stale count (4 after the queue had emptied, where a fresh channel said 0).
        channel = await self._started()[0].channel(publisher_confirms=False)
        try:
            total = 0
            for name in {sub.queue_name for sub in self._subscriptions}:
                declared = await channel.declare_queue(name, passive=True)  # asks its count, changes nothing
                total += declared.declaration_result.message_count or 0
            return total
        finally:
            await _close_quietly(channel)

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
        if queue_name(consumer, self._queue_prefix) == DEAD_LETTER_QUEUE:
            raise ValueError(f"consumer name {consumer!r} is reserved for the dead-letter queue")
        connection = self._started()[0]

        async def attempt() -> _RabbitSubscription:
            # A channel per subscription, so its prefetch is its own and closing it hands
            # its unacked messages back to the queue.
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                source = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
                queue = await channel.declare_queue(
                    queue_name(consumer, self._queue_prefix),
                    durable=not ephemeral,
                    auto_delete=ephemeral,
                    arguments={"x-dead-letter-exchange": DEAD_LETTER_EXCHANGE},
                )
                for key in binding_keys:
                    await queue.bind(source, key)
                subscription = _RabbitSubscription(channel, queue, handler, self, self._subscriptions.discard, consumer)
                await subscription.start()
            except BaseException:
                await _close_quietly(channel)
                raise
            return subscription

        subscription = await self._retrying(f"subscribing {consumer} to {exchange}", attempt)
        self._subscriptions.add(subscription)
        return subscription

    async def _connect(self) -> tuple[AbstractRobustConnection, AbstractChannel]:
        connection = aio_pika.RobustConnection(make_url(self._url), reconnect_interval=self._reconnect_interval)
        try:
            await connection.connect(timeout=10)
            broker = outage("the broker")
            # Consumers too learn of an outage: one line when the connection is lost, one when it is back.
            connection.close_callbacks.add(lambda _sender, error: None if self._closing else broker.failed(error))
            connection.reconnect_callbacks.add(lambda _sender: broker.recovered())
            channel = await connection.channel(publisher_confirms=True)
            dead_letters = await channel.declare_exchange(
                DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
            )
            queue = await channel.declare_queue(DEAD_LETTER_QUEUE, durable=True)
            await queue.bind(dead_letters)
            # Every exchange exists from the start: consumers that declare theirs passively (a stock
            # Treeherder's listeners) would otherwise fail until infrax first published on each.
            for exchange in topics.ALL_EXCHANGES:
                await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        except BaseException:
            # Also when cancelled: a robust connection left behind would reconnect forever.
            await asyncio.shield(connection.close())
            raise
        return connection, channel

    def _started(self) -> tuple[AbstractRobustConnection, AbstractChannel]:
        if self._connection is None or self._channel is None:
            raise BusError(f"{self!r} is not started")
        return self._connection, self._channel

    async def _retrying(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run `attempt` until it succeeds, backing off, for at most `retry_for` seconds; one
        warning per outage for the whole process (`infrax.retry`), however many callers wait."""

        async def bounded() -> T:
            # asyncio.timeout, not wait_for: no task per call, and this is every publish's path.
            async with asyncio.timeout(self._retry_for):
                return await attempt()

        try:
            return await retry(
                bounded,
                on=_TRANSIENT,
                deadline=self._retry_for,
                first=_FIRST_DELAY,
                maximum=_MAX_DELAY,
                during=outage("the broker"),
            )
        except _PERMANENT as e:
            raise BusError(f"{what}: {e!r}") from e
        except _TRANSIENT as e:
            raise BusError(f"{what}: still failing after {self._retry_for:g} s: {e!r}") from e


def _retrieve_exception(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def _close_quietly(channel: AbstractChannel) -> None:
    try:
        await asyncio.shield(asyncio.wait_for(channel.close(), 5))
    except _TRANSIENT as e:
        log.debug("closing a channel: %r", e)


class _RabbitSubscription(Subscription):
    def __init__(
        self,
        channel: AbstractChannel,
        queue: AbstractQueue,
        handler: Handler,
        bus: RabbitMQBus,
        forget: Callable[[_RabbitSubscription], None],
        consumer: str = "",
    ) -> None:
        self._channel = channel
        self._consumer = consumer or queue.name  # as the metrics name it, on either bus
        self._queue = queue
        self.queue_name = queue.name
        self._handler = handler
        self._bus = bus
        self._forget = forget
        self._tag: str | None = None
        self._cancelled = False
        self._in_flight: set[asyncio.Task[None]] = set()
        self._acks = _AckBatcher(queue.name)

    async def start(self) -> None:
        self._tag = await self._queue.consume(self._on_message, no_ack=False)

    async def cancel(self) -> None:
        self._forget(self)
        self._cancelled = True
        if self._tag is not None:
            try:
                await asyncio.wait_for(self._queue.cancel(self._tag), 5)
            except _TRANSIENT as e:
                log.debug("cancelling consumer of %s: %r", self._queue.name, e)
            self._tag = None
        # Handlers still running lose their messages to the queue: closing the channel requeues
        # whatever is unacked, and the next consumer sees it with `redelivered=True`.
        for task in self._in_flight:
            task.cancel()
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        # Handled messages are acked before the channel closes; else the broker requeues them too.
        await self._acks.drain()
        await _close_quietly(self._channel)

    async def _on_message(self, incoming: AbstractIncomingMessage) -> None:
        if self._cancelled:
            return  # unacked, so closing the channel hands it back
        channel = self._acks.received(incoming)
        # Our own task, not aio-pika's: a handler is not cancelled by a connection blip; its
        # ack then fails and the broker redelivers, which at-least-once allows.
        task = asyncio.create_task(self._handle(incoming, channel))
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _handle(self, incoming: AbstractIncomingMessage, channel: Any) -> None:
        headers = dict(incoming.headers or {})
        # A retried message comes back through the default exchange: its origin is in its headers.
        exchange = str(headers.get(ORIGIN_EXCHANGE, incoming.exchange or ""))
        routing_key = str(headers.get(ORIGIN_ROUTING_KEY, incoming.routing_key or ""))
        tag = incoming.delivery_tag
        assert tag is not None  # set on every delivery to a consumer
        try:
            body = schemas.decode(exchange, incoming.body)
        except ValueError as e:
            log.error("dead-lettered a message of %s on %s %s: %s", self._queue.name, exchange, routing_key, e)
            self._bus.metrics.dead_lettered.labels(self._consumer).inc()
            await _settle(incoming.nack(requeue=False), "dead-letter", self._queue.name)
            self._acks.forget(channel, tag)  # only now: no ack may cover it before the nack
            return
        counted = str(headers.get(ATTEMPT, "1"))
        attempt = int(counted) if counted.isdigit() else 1
        message = Message(exchange, routing_key, body, bool(incoming.redelivered) or attempt > 1, headers)
        try:
            await self._handler(message)
        except Exception as error:  # noqa: BLE001 - any handler failure is retried, then dead-lettered
            self._bus.metrics.handler_failures.labels(self._consumer).inc()
            await self._retry_later(incoming, channel, tag, exchange, routing_key, headers, attempt, error)
            return
        if not self._cancelled:
            self._acks.handled(channel, tag)
            self._bus.metrics.consumed.labels(self._consumer).inc()

    async def _retry_later(
        self,
        incoming: AbstractIncomingMessage,
        channel: Any,
        tag: int,
        exchange: str,
        routing_key: str,
        headers: dict[str, Any],
        attempt: int,
        error: Exception,
    ) -> None:
        """A handler failed: the message goes back to the end of the queue after a pause, at most
        `max_deliveries` times in all, then to the dead-letter queue with the error."""
        bus, queue = self._bus, self._queue.name
        origin = {**headers, ORIGIN_EXCHANGE: exchange, ORIGIN_ROUTING_KEY: routing_key}
        try:
            if attempt >= bus._max_deliveries:
                log.error(
                    "dead-lettered a message of %s on %s %s after %d failed deliveries: %r",
                    queue,
                    exchange,
                    routing_key,
                    attempt,
                    error,
                )
                bus.metrics.dead_lettered.labels(self._consumer).inc()
                copy = {**origin, DEAD_QUEUE: queue, DEAD_ERROR: repr(error)[:1000]}
                await bus._enqueue(DEAD_LETTER_EXCHANGE, routing_key, incoming.body, copy)
            else:
                log.warning(
                    "handler of %s failed on %s (delivery %d of %d); retrying: %r",
                    queue,
                    routing_key,
                    attempt,
                    bus._max_deliveries,
                    error,
                    exc_info=attempt == 1,
                )
                await asyncio.sleep(delay(attempt - 1, bus._redelivery_delay))
                await bus._enqueue("", queue, incoming.body, {**origin, ATTEMPT: attempt + 1})
        except (BusError, asyncio.CancelledError):
            # Not republished: unacked, it goes back to the queue when the channel closes.
            await _settle(incoming.nack(requeue=True), "nack", queue)
            self._acks.forget(channel, tag)
            raise
        if not self._cancelled:
            self._acks.handled(channel, tag)


class _AckBatcher:
    """Acks handled messages with as few frames as it can, never acking one still being handled.

    Delivery tags rise on a channel, and an ack with `multiple` settles every unacked tag up to
    it. So handled messages are acked together as far as the oldest one still being handled
    (one frame for, often, a whole batch the handler committed at once), and those handled
    behind it singly, all at the end of the event loop's current turn: no ack waits for
    another message's handler.
    """

    def __init__(self, queue_name: str) -> None:
        self._queue_name = queue_name
        # Per driver channel (a new one after a reconnect, with tags from 1 again):
        # delivery tag -> handled yet?, in the order received.
        self._pending: dict[Any, dict[int, bool]] = {}
        self._flush_scheduled = False
        self._sending = BackgroundTasks()

    def received(self, incoming: AbstractIncomingMessage) -> Any:
        """Track a delivery; returns its driver channel, to name it by later (`incoming.channel`
        raises once that channel is closed)."""
        channel = incoming.channel
        self._pending.setdefault(channel, {})[incoming.delivery_tag] = False  # type: ignore[index]
        return channel

    def forget(self, channel: Any, tag: int) -> None:
        """A message settled otherwise (nack, dead letter): no ack may cover it."""
        self._pending.get(channel, {}).pop(tag, None)

    def handled(self, channel: Any, tag: int) -> None:
        tags = self._pending.get(channel)
        if tags is None or tag not in tags:
            return
        tags[tag] = True
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        for channel, tags in list(self._pending.items()):
            if channel.is_closed:
                del self._pending[channel]  # the broker requeued what it had not been acked
                continue
            upto = None
            for tag, done in list(tags.items()):
                if not done:
                    break
                upto = tag
                del tags[tag]
            singles = [tag for tag, done in tags.items() if done]
            for tag in singles:
                del tags[tag]
            if upto is not None:
                self._send(channel.basic_ack(upto, multiple=True))
            for tag in singles:
                self._send(channel.basic_ack(tag))

    async def drain(self) -> None:
        """Send every ack that is due now and wait until they are written."""
        self._flush()
        await self._sending.wait()

    def _send(self, ack: Awaitable[None]) -> None:
        self._sending.spawn(_settle(ack, "ack", self._queue_name))


async def _settle(outcome: Awaitable[Any], what: str, queue_name: str) -> None:
    try:
        await outcome
    except _TRANSIENT as e:
        # The channel this came on is gone; the broker requeued the message already.
        log.info("could not %s a message of %s (%r); it will be redelivered", what, queue_name, e)
