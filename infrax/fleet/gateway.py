"""The provisioner's side of the worker connections: who is connected, calls to them, and a relay
address per remote container whose connections are channels of its worker's WebSocket.

A worker is known by pool and name, across reconnects: its containers outlive a dropped
connection for `grace` seconds, after which they count as gone (`alive` says so, the provisioner
retires them, their runs are re-run). A worker that comes back is told which of the containers it
still runs were given up meanwhile (`orphans`), and stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from infrax.auth import TokenStore
from infrax.fleet.links import (
    BAD_MESSAGE,
    CALL_TIMEOUT,
    CHUNK,
    REFUSED,
    REMOVED,
    SILENCE,
    UNAUTHORIZED,
    NoRoom,
    RemoteContainer,
    UnknownWorker,
    WorkerBusy,
    WorkerCallFailed,
    WorkerLink,
    worker_scope,
)
from infrax.fleet.protocol import (
    Answer,
    Beat,
    Call,
    Close,
    Drain,
    Hello,
    Open,
    ProtocolError,
    Welcome,
    decode,
    unframe,
)

log = logging.getLogger(__name__)


class Gateway:
    def __init__(
        self,
        tokens: TokenStore,
        grace: float = 10.0,
        relay_host: str = "127.0.0.1",
        clock: Callable[[], float] = time.monotonic,
        recheck: float = 10.0,
    ) -> None:
        self.tokens = tokens
        self.recheck = recheck  # seconds between checks of a connected worker's token
        self.grace = grace
        self.relay_host = relay_host
        self.clock = clock
        self.workers: dict[tuple[str, str], WorkerLink] = {}
        self.beats: Counter[str] = Counter()  # by pool, since this provisioner started
        self.containers: dict[str, RemoteContainer] = {}
        self._at_port: dict[int, str] = {}  # relay port -> container
        self._calls = itertools.count()
        self._channels = itertools.count(1)
        self.on_change: Callable[[], None] | None = None

    # -- the connection ---------------------------------------------------------------------

    async def serve(self, socket: WebSocket) -> None:
        """One worker's connection, from its hello to its end."""
        header = socket.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        caller = await self.tokens.check(token.strip()) if scheme.lower() == "bearer" and token.strip() else None
        if caller is None:
            await socket.close(UNAUTHORIZED, "a valid pool token is needed (Authorization: Bearer ifx_…)")
            return
        await socket.accept()
        try:
            hello = decode(await asyncio.wait_for(socket.receive_text(), CALL_TIMEOUT))
        except (ProtocolError, TimeoutError, WebSocketDisconnect, KeyError) as error:
            await _close(socket, BAD_MESSAGE, f"the first message must be a hello: {error}")
            return
        if not isinstance(hello, Hello):
            await _close(socket, BAD_MESSAGE, f"the first message must be a hello, not {hello.kind}")
            return
        if not caller.may(worker_scope(hello.pool)):
            log.warning("refused worker %s: token %s lacks %s", hello.name, caller.name, worker_scope(hello.pool))
            await _close(socket, REFUSED, f"missing scope {worker_scope(hello.pool)}")
            return
        link = await self._join(socket, hello)
        try:
            await self._receive(link, socket, token.strip())
        finally:
            if link.socket is socket:
                self._leave(link)

    async def _join(self, socket: WebSocket, hello: Hello) -> WorkerLink:
        key = (hello.pool, hello.name)
        link = self.workers.get(key)
        if link is None:
            link = self.workers[key] = WorkerLink(hello.pool, hello.name)
        elif link.socket is not None:  # it reconnected before its old connection was seen to end
            old = link.socket
            self._leave(link)
            with contextlib.suppress(Exception):
                await old.close(1000, "replaced by a newer connection of the same worker")
        now = self.clock()
        link.socket, link.connected_at, link.last_seen, link.away_since = socket, now, now, None
        link.capacity, link.agent_version, link.draining = hello.capacity, hello.agent_version, False
        link.back.set()
        # What it still runs that was given up while it was away: it stops those.
        orphans = [c for c in hello.containers if c not in link.containers]
        link.containers &= set(hello.containers)  # and what it no longer runs is gone
        for gone in [
            c for c, known in self.containers.items() if known.worker == link.name and c not in link.containers
        ]:
            if self.containers[gone].pool == link.pool:
                await self._drop(gone)
        await link.send(Welcome(worker_id=link.id, grace=self.grace, orphans=orphans))
        log.info("worker %s joined pool %s (capacity %d)", link.name, link.pool, link.capacity)
        self._changed()
        return link

    async def _receive(self, link: WorkerLink, socket: WebSocket, token: str) -> None:
        checked = self.clock()
        while True:
            try:
                message = await socket.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            link.last_seen = self.clock()
            if link.last_seen - checked >= self.recheck:  # a token revoked since the worker joined ends it
                checked = link.last_seen
                caller = await self.tokens.check(token)
                if caller is None or not caller.may(worker_scope(link.pool)):
                    log.warning("worker %s of pool %s: its token no longer holds; disconnected", link.name, link.pool)
                    await _close(socket, UNAUTHORIZED, "the worker's token was revoked")
                    return
            try:
                if message.get("bytes") is not None:
                    channel, data = unframe(message["bytes"])
                    writer = link.channels.get(channel)
                    if writer is not None:
                        writer.write(data)
                        await writer.drain()
                    continue
                received = decode(message.get("text") or "")
            except ProtocolError as error:
                await _close(socket, BAD_MESSAGE, str(error))
                return
            except (ConnectionError, OSError):  # the relay's side went: its close follows
                continue
            if isinstance(received, Beat):
                self.beats[link.pool] += 1
                continue
            if isinstance(received, Answer):
                pending = link.pending.pop(received.id, None)
                if pending is not None and not pending.done():
                    if received.error is not None:
                        pending.set_exception(WorkerCallFailed(received.error))
                    else:
                        pending.set_result(received.result or {})
            elif isinstance(received, Close):
                writer = link.channels.pop(received.channel, None)
                if writer is not None:
                    writer.close()
            else:
                await _close(socket, BAD_MESSAGE, f"a worker does not send {received.kind}")
                return

    def _leave(self, link: WorkerLink) -> None:
        link.socket, link.away_since = None, min(self.clock(), link.last_seen + SILENCE)
        link.back.clear()
        for writer in link.channels.values():
            writer.close()
        link.channels.clear()
        for pending in link.pending.values():
            if not pending.done():
                pending.set_exception(ConnectionError(f"worker {link.name} went away"))
        link.pending.clear()
        log.warning("worker %s of pool %s went away; its containers are kept %.0f s", link.name, link.pool, self.grace)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    # -- what the pool provider asks ----------------------------------------------------------

    def present(self, link: WorkerLink) -> bool:
        """Connected and heard from lately: a silent connection is a link that died unnoticed."""
        return link.connected and self.clock() - link.last_seen < SILENCE

    def away_for(self, link: WorkerLink) -> float:
        """Seconds since it was last there (0 while present)."""
        if self.present(link):
            return 0.0
        since = link.last_seen + SILENCE if link.connected else (link.away_since or link.last_seen)
        return max(0.0, self.clock() - since)

    def container_at(self, port: int) -> str | None:
        return self._at_port.get(port)

    def link_of(self, container_id: str) -> WorkerLink | None:
        known = self.containers.get(container_id)
        link = self.workers.get((known.pool, known.worker)) if known else None
        return link if link is not None and container_id in link.containers else None

    def usable(self, pool: str) -> list[WorkerLink]:
        return [w for w in self.workers.values() if w.pool == pool and self.present(w) and not w.draining]

    def capacity(self, pool: str) -> int:
        return sum(w.capacity for w in self.usable(pool))

    async def call(self, link: WorkerLink, method: str, params: dict[str, Any], timeout: float) -> dict[str, Any]:
        number = next(self._calls)
        answered: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        link.pending[number] = answered
        try:
            await link.send(Call(id=number, method=method, params=params))  # type: ignore[arg-type]
            async with asyncio.timeout(timeout):
                return await answered
        finally:
            link.pending.pop(number, None)

    async def start_container(
        self, pool: str, container_id: str, params: dict[str, Any], timeout: float
    ) -> tuple[str, int]:
        """Start it on the worker of the pool with the most room; where its relay listens."""
        candidates = [w for w in self.usable(pool) if len(w.containers) < w.capacity]
        if not candidates:
            raise NoRoom(f"no worker of pool {pool} has room ({len(self.usable(pool))} connected)")
        link = min(candidates, key=lambda w: len(w.containers) / w.capacity)
        link.containers.add(container_id)
        self.containers[container_id] = RemoteContainer(container_id, pool, link.name)
        try:
            await self.call(link, "create", {"containerId": container_id, **params}, timeout)
            return await self._relay(self.containers[container_id])
        except BaseException:
            link.containers.discard(container_id)
            await self._drop(container_id)
            raise

    def alive(self, container_id: str) -> bool:
        """Its worker is there, or has been away for less than the grace."""
        link = self.link_of(container_id)
        return link is not None and self.away_for(link) < self.grace

    async def stop_container(self, container_id: str, timeout: float) -> None:
        known = self.containers.get(container_id)
        if known is None:
            return
        link = self.workers.get((known.pool, known.worker))
        await self._drop(container_id)
        if link is not None:
            link.containers.discard(container_id)
            if link.connected:
                with contextlib.suppress(ConnectionError, TimeoutError, WorkerCallFailed):
                    await self.call(link, "destroy", {"containerId": container_id}, timeout)

    def draining(self, container_id: str) -> bool:
        link = self.link_of(container_id)
        return link is not None and link.draining

    def worker(self, worker_id: str) -> WorkerLink:
        for link in self.workers.values():
            if link.id == worker_id:
                return link
        raise UnknownWorker(f"no worker {worker_id}")

    async def drain(self, worker_id: str) -> WorkerLink:
        """It takes nothing new; its containers go as they become idle; what runs finishes."""
        link = self.worker(worker_id)
        link.draining = True
        if link.connected:
            with contextlib.suppress(ConnectionError):
                await link.send(Drain())
        log.info("worker %s of pool %s drains (%d containers)", link.name, link.pool, len(link.containers))
        return link

    async def remove(self, worker_id: str) -> None:
        """Forget a worker that runs nothing (drained, or gone); a connected one is told to stop."""
        link = self.worker(worker_id)
        if link.containers:
            raise WorkerBusy(f"worker {link.name} still has {len(link.containers)} containers: drain it first")
        socket = link.socket
        del self.workers[(link.pool, link.name)]
        if socket is not None:
            self._leave(link)
            await _close(socket, REMOVED, "removed from its pool")

    def container_ids(self, pool: str) -> list[str]:
        return [c for c, known in self.containers.items() if known.pool == pool]

    async def _drop(self, container_id: str) -> None:
        """Forget it: its relay stops listening, and what is connected through it is cut (an
        executioner still following a run there learns at once that the run is lost)."""
        known = self.containers.pop(container_id, None)
        if known is None:
            return
        if known.relay is not None:
            known.relay.close()
            self._at_port.pop(known.port, None)
        link = self.workers.get((known.pool, known.worker))
        for channel in known.channels:
            writer = link.channels.pop(channel, None) if link is not None else None
            if writer is not None:
                writer.close()

    async def close(self) -> None:
        for container_id in list(self.containers):
            await self._drop(container_id)

    # -- relays -------------------------------------------------------------------------------

    async def _relay(self, container: RemoteContainer) -> tuple[str, int]:
        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._carry(container, reader, writer)

        container.relay = await asyncio.start_server(connected, self.relay_host, 0)
        container.port = container.relay.sockets[0].getsockname()[1]
        self._at_port[container.port] = container.id  # how a heartbeat to the relay finds its container
        return self.relay_host, container.port

    async def _carry(
        self, container: RemoteContainer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """One connection to the relay: a channel to the container's agent, until either side ends it."""
        link = self.workers.get((container.pool, container.worker))
        channel = next(self._channels)
        try:
            if link is None:
                return
            if not link.connected:  # away: the connection waits for it while the grace lasts
                left = self.grace - self.away_for(link)
                if left <= 0:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(link.back.wait(), left)
                if not link.connected or container.id not in link.containers:
                    return
            link.channels[channel] = writer
            container.channels.add(channel)
            await link.send(Open(channel=channel, container_id=container.id))
            while data := await reader.read(CHUNK):
                await link.send_bytes(channel, data)
            if link.channels.pop(channel, None) is not None:
                await link.send(Close(channel=channel))
        except (ConnectionError, OSError):
            pass
        finally:
            container.channels.discard(channel)
            if link is not None:
                link.channels.pop(channel, None)
            writer.close()

    # -- what people see ----------------------------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        return [self.view(w) for w in sorted(self.workers.values(), key=lambda w: (w.pool, w.name))]

    def view(self, w: WorkerLink) -> dict[str, Any]:
        return {
            "id": w.id,
            "pool": w.pool,
            "name": w.name,
            "connected": w.connected,
            "draining": w.draining,
            "capacity": w.capacity,
            "containers": len(w.containers),
            "agentVersion": w.agent_version,
            "present": self.present(w),
            "lastSeenSecondsAgo": round(self.clock() - w.last_seen, 3),
        }


async def _close(socket: WebSocket, code: int, reason: str) -> None:
    with contextlib.suppress(Exception):
        await socket.close(code, reason[:120])
