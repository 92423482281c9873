"""A run's messages as the agent keeps them for whoever follows the run: its start, a bounded
window of its output, its end. Several connections may follow one run, and one that dropped
re-attaches from where it was.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import AsyncGenerator
from typing import Any, Final

from infrax.agent.protocol import MessageType

# Merged output messages stay below this many characters: even if every character
# needed a 6-byte JSON escape the line stays far below MAX_LINE_BYTES.
MAX_MESSAGE_CHARS: Final = 64 * 1024
# At most this many messages go into one socket write, so a follower that is far
# behind still drains (and notices a dead peer) regularly.
MAX_BATCH: Final = 256


class OutputLog:
    """Ordered record of a run's messages that several followers can stream concurrently.

    Holds the ``started`` message, a bounded window of ``output`` messages (numbered
    by ``seq``) and finally the ``exit`` message. Followers that fall behind the
    window get a ``gap`` message instead of the dropped output.
    """

    def __init__(self, run_id: str, max_messages: int, max_bytes: int) -> None:
        self.run_id = run_id
        self._max_messages = max(1, max_messages)
        self._max_bytes = max_bytes
        self._buffer: collections.deque[dict[str, Any]] = collections.deque()
        self._buffer_chars = 0
        self._first_seq = 0  # seq of self._buffer[0]
        self._next_seq = 0
        # Highest seq any follower has taken; later messages may still be merged.
        self._delivered = -1
        self.started: dict[str, Any] | None = None
        self.final: dict[str, Any] | None = None
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        # A fresh Event per change: waiters keep the one they awaited, so nobody
        # has to clear it and no wakeup can be lost.
        self._changed.set()
        self._changed = asyncio.Event()

    def set_started(self, pid: int) -> None:
        """Record that the process is running."""
        self.started = {"type": MessageType.STARTED, "runId": self.run_id, "pid": pid}
        self._notify()

    def append(self, stream: str, data: str) -> None:
        """Record a piece of output."""
        if not data:
            return
        last = self._buffer[-1] if self._buffer else None
        if (
            last is not None
            and last["seq"] > self._delivered
            and last["stream"] == stream
            and len(last["data"]) + len(data) <= MAX_MESSAGE_CHARS
        ):
            # Nobody has seen the last message yet: grow it instead of adding one.
            # Under load (fast writer, slow or absent reader) this keeps the message
            # count, and so the per-message overhead, low.
            self._buffer[-1] = {**last, "data": last["data"] + data}
            self._buffer_chars += len(data)
        else:
            self._buffer.append(
                {
                    "type": MessageType.OUTPUT,
                    "runId": self.run_id,
                    "seq": self._next_seq,
                    "stream": stream,
                    "data": data,
                }
            )
            self._next_seq += 1
            self._buffer_chars += len(data)
        while len(self._buffer) > 1 and (
            len(self._buffer) > self._max_messages or self._buffer_chars > self._max_bytes
        ):
            dropped = self._buffer.popleft()
            self._buffer_chars -= len(dropped["data"])
            self._first_seq += 1
        self._notify()

    def finish(self, exit_message: dict[str, Any]) -> None:
        """Record the final ``exit`` message; followers end after delivering it."""
        self.final = exit_message
        self._notify()

    async def wait_finished(self) -> dict[str, Any]:
        """Wait for the ``exit`` message."""
        while self.final is None:
            await self._changed.wait()
        return self.final

    async def follow(self, start_seq: int = 0) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Yield batches of messages: ``started``, outputs from ``start_seq`` (or a ``gap``), ``exit``."""
        cursor = start_seq
        started_sent = False
        while True:
            batch: list[dict[str, Any]] = []
            if not started_sent and self.started is not None:
                batch.append(self.started)
                started_sent = True
            if cursor < self._first_seq:
                batch.append({"type": MessageType.GAP, "runId": self.run_id, "from": cursor, "to": self._first_seq - 1})
                cursor = self._first_seq
            if cursor < self._next_seq:
                offset = cursor - self._first_seq
                batch.extend(itertools.islice(self._buffer, offset, offset + MAX_BATCH))
                cursor = batch[-1]["seq"] + 1
                self._delivered = max(self._delivered, cursor - 1)
            if batch:
                # Re-check everything after yielding: the consumer awaited in between.
                yield batch
                continue
            if self.final is not None:
                yield [self.final]
                return
            await self._changed.wait()
