"""Handling many bus messages in one transaction, while each is acked only after that commit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self, apply: Callable[[list[T]], Awaitable[None]], max_batch: int = 500, linger: float = 0.002
    ) -> None:
        self._apply = apply
        # Waiting a moment for more makes batches, and so transactions, fewer under load; measured
        # with `make bench`, 2 ms gained a tenth in throughput and cost no dispatch latency, 5 ms lost both.
        self._linger = linger
        self._max_batch = max_batch
        self._inbox: asyncio.Queue[tuple[T, asyncio.Future[None]]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._worker:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def submit(self, item: T) -> None:
        """Returns once `item` is applied and committed; raises if applying it failed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inbox.put_nowait((item, done))
        await done

    async def _run(self) -> None:
        while True:
            batch = [await self._inbox.get()]
            await asyncio.sleep(self._linger)
            while len(batch) < self._max_batch and not self._inbox.empty():
                batch.append(self._inbox.get_nowait())
            try:
                await self._apply([item for item, _ in batch])
            except asyncio.CancelledError:
                for _, done in batch:
                    done.cancel()
                raise
            except Exception as error:
                log.exception("applying a batch of %d failed", len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
