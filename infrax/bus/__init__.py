"""The message bus: Pulse-style topic exchanges, in process or on RabbitMQ."""

from infrax.bus.base import Bus, BusError, DeadLetter, Handler, Message, Subscription, topic_matches

__all__ = ["Bus", "BusError", "DeadLetter", "Handler", "Message", "Subscription", "open_bus", "topic_matches"]


def open_bus(url: str, max_deliveries: int = 8) -> Bus:
    """`memory://` for the in-process bus, `amqp://…` for RabbitMQ.

    A message whose handler keeps failing is delivered `max_deliveries` times in all (with
    backoff), then dead-lettered with the error."""
    if url.startswith("memory:"):
        from infrax.bus.memory import MemoryBus

        return MemoryBus(max_deliveries=max_deliveries)
    if url.startswith(("amqp://", "amqps://")):
        from infrax.bus.rabbitmq import RabbitMQBus

        return RabbitMQBus(url, max_deliveries=max_deliveries)
    raise ValueError(f"unknown bus URL {url!r}: use memory:// or amqp://user:pass@host:port/vhost")
