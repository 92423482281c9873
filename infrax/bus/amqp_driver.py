"""What infrax does with the aiormq driver under aio-pika, each measured under load (`make bench`).

- Deeper frame queues. aiormq queues at most 10 frames per connection going out, and per channel
  coming in. The connection's one reader waits whenever any channel's queue is full, so one busy
  consumer held up every other channel's deliveries and every publish's confirm, and frames moved
  one event-loop iteration at a time: under load, not the broker, that made each message wait
  ~60 ms.
- One socket write per event-loop turn. The driver wrote every queued publish, ack and method
  with a `write()` of its own: a system call each, and each wakes the broker. Frames queued
  while the writer waited now go out together in one write, still in order.
- Publishing many messages at once (`publish_confirmed`): one lock, one frame write and one
  timeout for all, where `basic_publish` took each of those per message and cost ~0.2 ms of CPU
  a message, more than anything else on the bus.

The first two are applied on import of `infrax.bus.rabbitmq`; they change no behaviour but timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections.abc import Sequence

import aiormq
import aiormq.connection
from aiormq.abc import ChannelFrame
from pamqp.commands import Basic
from pamqp.header import ContentHeader

FRAME_BUFFER_SIZE = 1024
MAX_FRAMES_PER_WRITE = 256


@dataclasses.dataclass(frozen=True)
class _Frames(ChannelFrame):
    """Several queued frames as one: one payload, and every one's drain done after the write."""

    parts: tuple[ChannelFrame, ...] = ()

    def drain(self) -> None:
        for part in self.parts:
            part.drain()

    @property
    def should_drain(self) -> bool:
        return any(part.should_drain for part in self.parts)


class _CoalescingFrameGenerator(aiormq.connection.FrameGenerator):
    async def __anext__(self) -> ChannelFrame:
        first = await super().__anext__()
        if first.should_close or self.queue.empty():
            return first
        parts = [first]
        while not self.queue.empty() and len(parts) < MAX_FRAMES_PER_WRITE:
            frame = self.queue.get_nowait()
            self.queue.task_done()
            parts.append(frame)
            if frame.should_close:  # the writer stops after it: nothing may follow in the same write
                break
        return _Frames(
            payload=b"".join(p.payload for p in parts), should_close=parts[-1].should_close, parts=tuple(parts)
        )


def apply() -> None:
    if getattr(aiormq.connection, "_infrax_tuned", False):
        return
    aiormq.Connection.FRAME_BUFFER_SIZE = max(aiormq.Connection.FRAME_BUFFER_SIZE, FRAME_BUFFER_SIZE)
    open_channel = aiormq.Connection.channel
    aiormq.Connection.channel = functools.partialmethod(  # type: ignore[method-assign,assignment]
        open_channel, frame_buffer_size=FRAME_BUFFER_SIZE
    )
    aiormq.connection.FrameGenerator = _CoalescingFrameGenerator  # type: ignore[misc]
    aiormq.connection._infrax_tuned = True  # type: ignore[attr-defined]


PUBLISH_SLICE = 100  # messages marshalled and written at a time


@dataclasses.dataclass(frozen=True)
class Outgoing:
    exchange: str
    routing_key: str
    data: bytes
    properties: Basic.Properties


async def publish_confirmed(channel: aiormq.Channel, messages: Sequence[Outgoing]) -> None:
    """`basic_publish` for several messages: returns once the broker confirmed every one.

    Raises aiormq's `DeliveryError` if the broker refused one, and the channel's error if it
    closed first. Tags and confirmations are registered only once the frames are queued, all
    under the channel's lock (that every publish on it takes), so a cancellation leaves no
    trace and the broker's confirms always find their messages. In slices of `PUBLISH_SLICE`,
    the event loop's other work going on between them: marshalling a thousand messages at once
    was one 30–80 ms callback, and every request the process served waited behind it.
    """
    confirmations: list[asyncio.Future[object]] = []
    async with channel.lock:
        for start in range(0, len(messages), PUBLISH_SLICE):
            if start:
                await asyncio.sleep(0)
            part = messages[start : start + PUBLISH_SLICE]
            frames: list[object] = []
            for message in part:
                frames.append(Basic.Publish(exchange=message.exchange, routing_key=message.routing_key))
                frames.append(ContentHeader(properties=message.properties, body_size=len(message.data)))
                frames.extend(channel._split_body(message.data))
            payload = ChannelFrame.marshall(channel_number=channel.number, frames=frames)  # type: ignore[arg-type]
            sliced = [channel.create_future() for _ in part]
            await channel.write_queue.put(payload)
            first = channel.delivery_tag + 1
            channel.delivery_tag += len(part)
            for offset, confirmation in enumerate(sliced):
                channel.confirmations[first + offset] = confirmation
            confirmations += sliced
    await asyncio.gather(*confirmations)
