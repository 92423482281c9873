"""What the pages show as it happens: the bus's job, task and partition news, each boiled down to
what a push list redraws, fanned out to every open page (server-sent events).

A page that reads slower than news comes loses the oldest (its queue is bounded) and is told to
reload; nothing waits for it."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from infrax.bus import Bus, Message, Subscription, topics
from infrax.model import new_id

log = logging.getLogger(__name__)

QUEUE = 1000  # news kept per page before it is told to reload


class Live:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._pages: set[asyncio.Queue[dict[str, Any]]] = set()
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        name = f"web-{new_id()[:12]}"  # a queue of this process's own, gone with it
        for exchange, handler in (
            (topics.JOBS, self._on_job),
            (topics.PARTITIONS, self._on_partition),
            (topics.TASKS, self._on_task),
        ):
            self._subscriptions.append(
                await self.bus.subscribe(
                    f"{name}-{exchange.rsplit('/', 1)[1]}", exchange, ["#"], handler, ephemeral=True
                )
            )

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.cancel()
        self._subscriptions = []

    def _send(self, news: dict[str, Any]) -> None:
        for queue in self._pages:
            if queue.full():
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"kind": "reload"})
            else:
                queue.put_nowait(news)

    async def _on_job(self, message: Message) -> None:
        body = message.body
        self._send({"kind": "job", "job": body["jobId"], "state": body["state"], "message": body.get("message")})

    async def _on_task(self, message: Message) -> None:
        body = message.body
        if body.get("jobId"):
            self._send({"kind": "task", "job": body["jobId"], "task": body["taskId"], "state": body["state"]})

    async def _on_partition(self, message: Message) -> None:
        part = message.body["partition"]
        if part.get("jobId"):
            self._send(
                {
                    "kind": "partition",
                    "job": part["jobId"],
                    "task": part["taskId"],
                    "taskName": message.body.get("taskName"),
                    "partition": part["id"],
                    "index": part["index"],
                    "count": part["count"],
                    "state": part["state"],
                    "run": part["run"],
                }
            )

    async def events(self) -> AsyncIterator[bytes]:
        """One page's server-sent events, until it goes away (a comment every 15 s keeps proxies open)."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE)
        self._pages.add(queue)
        try:
            yield b": connected\n\n"
            while True:
                try:
                    news = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield b": still here\n\n"
                    continue
                yield f"data: {json.dumps(news, separators=(',', ':'))}\n\n".encode()
        finally:
            self._pages.discard(queue)
