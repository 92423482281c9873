"""The bus interface: topic exchanges with AMQP routing, durable per-consumer queues, ack after effect."""

from __future__ import annotations

import abc
import functools
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from infrax.bus import schemas
from infrax.bus.metrics import BusMetrics


@dataclass(frozen=True)
class Message:
    """One delivery: the handler returning normally acks it, raising nacks it for redelivery."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class DeadLetter:
    """A delivery refused on receipt (see `infrax.bus.schemas`): kept aside, never handled."""

    queue: str
    exchange: str
    routing_key: str
    data: bytes
    reason: str


# AMQP's sender-selected distribution (a RabbitMQ extension): a header listing more routing keys
# the one message is routed by, as Taskcluster's queue CCs each task route as `route.<route>`.
CC = "CC"

Encoded = tuple[str, str, bytes] | tuple[str, str, bytes, dict[str, Any]]  # exchange, key, data[, headers]


class BusError(Exception):
    """The bus could not do what was asked (after its own bounded retries)."""


class Subscription(abc.ABC):
    @abc.abstractmethod
    async def cancel(self) -> None:
        """Stop delivering to this handler; the durable queue keeps collecting messages.

        Messages the handler has not finished with go back to the queue (`redelivered=True`).
        """


class Bus(abc.ABC):
    """Publish to topic exchanges; consume through named durable queues.

    Semantics every implementation keeps (and tests/bus checks on each):
    - routing keys are dot-separated words; a binding's `*` matches one word, `#` zero or more;
    - a consumer name owns one durable queue: messages published while it is not consuming
      wait for it, and two handlers on the same name share the queue's messages;
    - delivery is at least once: a message whose handler raised (or whose consumer went away
      before the handler returned) is delivered again with `redelivered=True`, so handlers
      are idempotent;
    - every body is checked against its exchange's message kinds (`infrax.bus.schemas`) on
      publish, where a bad one raises `ValueError`, and on receipt, where a bad one is
      dead-lettered with one log line and the consumer goes on.
    """

    metrics: BusMetrics  # what it published and consumed, for each component's `/metrics`

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def publish(
        self,
        exchange: str,
        routing_key: str,
        body: dict[str, Any],
        *,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish durably: once this returns the message is routed to every bound queue.

        Raises `ValueError` if `body` is not a message `exchange` carries, and `BusError`
        if the bus could not take it (after retrying for a bounded time).
        """

    async def publish_all(self, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Publish each `(exchange, routing_key, body)` in order, as `publish` does; returns once all are.

        Every body is checked before any goes out: one that is not a message its exchange
        carries raises `ValueError` and none is published.
        """
        messages = list(messages)
        for exchange, _, body in messages:
            schemas.encode(exchange, body)
        for exchange, routing_key, body in messages:
            await self.publish(exchange, routing_key, body)

    async def publish_encoded(self, messages: Iterable[Encoded]) -> None:
        """Publish messages `schemas.encode` already checked and encoded (an outbox's rows), in
        order, each with its headers when it has them (`CC`: more routing keys of the one message)."""
        for exchange, routing_key, data, *headers in messages:
            await self.publish(
                exchange, routing_key, schemas.decode(exchange, data), headers=headers[0] if headers else None
            )

    @abc.abstractmethod
    async def waiting(self) -> int:
        """How many messages wait in the queues this bus consumes from, not yet handed to a
        handler: the consumers' backlog (what a dashboard graphs, what "caught up" means)."""

    @abc.abstractmethod
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
        """Bind the consumer's durable queue to `exchange` with each key and start delivering.

        At most `prefetch` messages are in this handler's hands at once; each is acked
        when the handler returns and handed back for redelivery when it raises.

        `ephemeral` queues are for hints one process wants for itself (capacity freed, say):
        they go away when the subscription does, instead of collecting messages forever.
        """


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: `*` is exactly one word, `#` is zero or more words."""
    return _topic_pattern(binding_key).fullmatch("." + routing_key) is not None


@functools.lru_cache(maxsize=4096)
def _topic_pattern(binding_key: str) -> re.Pattern[str]:
    r"""A binding key as a regular expression over `.` + the routing key: each word is `\.word`,
    `*` one word, `#` any number of words (so `a.#` matches `a`). Compiled once per binding: the
    in-process bus matches every message against every binding."""
    words = {"*": r"\.[^.]+", "#": r"(?:\.[^.]+)*"}
    return re.compile("".join(words.get(word, r"\." + re.escape(word)) for word in binding_key.split(".")))
