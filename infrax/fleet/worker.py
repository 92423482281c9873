"""`infrax worker`: a machine that joins a pool by dialling out to the provisioner.

It keeps one WebSocket to the provisioner, reconnecting with backoff when it drops; it starts and
stops containers (agents of its own `process` provider) when asked, and connects each channel the
provisioner opens to the agent of the container named, on this machine's loopback. It opens no
port to the network and connects to nothing but the provisioner and its own agents.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from infrax.agent import PROTOCOL_VERSION
from infrax.fleet.links import CHUNK
from infrax.fleet.protocol import (
    Answer,
    Beat,
    Call,
    Close,
    Drain,
    FleetMessage,
    Hello,
    Open,
    ProtocolError,
    Welcome,
    decode,
    encode,
    frame,
    unframe,
)
from infrax.model import ContainerType
from infrax.provisioner.providers.base import ContainerProvider, Endpoint, ProviderError

log = logging.getLogger(__name__)

CONNECT_PATH = "/api/v1/workers/connect"
BEAT_INTERVAL = 1.0
SILENCE = 3.0  # a ping unanswered this long: the link is dead, whatever TCP thinks
FENCE_SHARE = 0.8  # of the grace: away this long, it stops its runs before the provisioner re-runs them
REFUSALS = {4401, 4403, 4400, 4410}  # refused, or removed from its pool: trying again changes nothing


class WorkerRefused(Exception):
    """The provisioner refused this worker (its token, its pool, its messages); the reason is its own."""


def connect_url(control_plane: str) -> str:
    base = control_plane.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base.removeprefix("https://") + CONNECT_PATH
    if base.startswith("http://"):
        return "ws://" + base.removeprefix("http://") + CONNECT_PATH
    raise ValueError(f"the provisioner's URL must be http:// or https://, not {control_plane!r}")


class Worker:
    def __init__(
        self,
        control_plane: str,
        pool: str,
        token: str,
        name: str,
        capacity: int,
        provider: ContainerProvider,
        max_backoff: float = 10.0,
    ) -> None:
        self.url = connect_url(control_plane)
        self.pool, self.token, self.name, self.capacity = pool, token, name, capacity
        self.provider = provider
        self.max_backoff = max_backoff
        self.endpoints: dict[str, Endpoint] = {}
        self.channels: dict[int, asyncio.StreamWriter] = {}
        self.draining = False
        self.connected = asyncio.Event()
        self.grace = 10.0  # the provisioner's, from its welcome
        self.last_contact = time.monotonic()  # the provisioner last answered then
        self._socket: ClientConnection | None = None
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Stay connected until cancelled (or refused)."""
        fence = asyncio.create_task(self._fence_when_away())
        try:
            await self._stay_connected()
        finally:
            fence.cancel()

    async def _fence_when_away(self) -> None:
        """Out of touch for most of the grace: the provisioner is about to give this worker's runs
        up and run them again elsewhere, so they stop here first (nothing completes twice)."""
        while True:
            await asyncio.sleep(0.2)
            away = time.monotonic() - self.last_contact
            if self.endpoints and not self.connected.is_set() and away > FENCE_SHARE * self.grace:
                log.warning(
                    "worker %s: out of touch for %.1f s; stopping its %d containers",
                    self.name,
                    away,
                    len(self.endpoints),
                )
                for container_id in list(self.endpoints):
                    with contextlib.suppress(ProviderError, OSError):
                        await self._destroy(container_id)

    async def _stay_connected(self) -> None:
        failures = 0
        while True:
            try:
                await self._session()
                failures = 0
            except WorkerRefused:
                raise
            except websockets.exceptions.InvalidStatus as refused:
                if refused.response.status_code in (401, 403):  # its token: trying again changes nothing
                    raise WorkerRefused(f"HTTP {refused.response.status_code}: the token is not valid") from None
                failures += 1
                log.warning("worker %s: connection to %s: %s", self.name, self.url, refused)
            except (OSError, websockets.exceptions.WebSocketException, TimeoutError, ProtocolError) as error:
                failures += 1
                log.warning("worker %s: connection to %s: %s", self.name, self.url, error or type(error).__name__)
            finally:
                self.connected.clear()
                self._socket = None
                for writer in self.channels.values():
                    writer.close()
                self.channels.clear()
            await asyncio.sleep(min(self.max_backoff, 0.2 * 2 ** min(failures, 8)) * random.uniform(0.5, 1.0))

    async def _session(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        async with websockets.connect(
            self.url, additional_headers=headers, max_size=None, ping_interval=None, open_timeout=SILENCE * 2
        ) as socket:
            self._socket = socket
            hello = Hello(
                name=self.name,
                pool=self.pool,
                capacity=self.capacity,
                agent_version=str(PROTOCOL_VERSION),
                containers=sorted(self.endpoints),
            )
            await socket.send(encode(hello))
            try:
                welcome = decode(str(await socket.recv()))
            except websockets.exceptions.ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code in REFUSALS:
                    raise WorkerRefused(closed.rcvd.reason) from None
                raise
            if not isinstance(welcome, Welcome):
                raise ProtocolError(f"expected a welcome, got {welcome.kind}")
            self.grace, self.last_contact = welcome.grace, time.monotonic()
            for orphan in welcome.orphans:  # given up while this worker was away: its runs were re-run
                await self._destroy(orphan)
            self.connected.set()
            log.info("worker %s joined pool %s as %s", self.name, self.pool, welcome.worker_id)
            keepalive = asyncio.create_task(self._keep_alive(socket))
            try:
                await self._serve(socket)
            except websockets.exceptions.ConnectionClosed as closed:
                if closed.rcvd is not None and closed.rcvd.code in REFUSALS:
                    raise WorkerRefused(closed.rcvd.reason) from None
                raise
            finally:
                keepalive.cancel()

    async def _keep_alive(self, socket: ClientConnection) -> None:
        """A beat a second for the provisioner, and a ping answered within SILENCE for this side;
        an unanswered one ends the connection (a dead link can keep TCP quiet for minutes)."""
        while True:
            try:
                await self._send(Beat())
                pong = await socket.ping()
                await asyncio.wait_for(pong, SILENCE)
            except TimeoutError:
                log.warning("worker %s: the provisioner did not answer for %.0f s; reconnecting", self.name, SILENCE)
                socket.transport.abort()
                return
            except (ConnectionError, websockets.exceptions.ConnectionClosed):
                return
            self.last_contact = time.monotonic()
            await asyncio.sleep(BEAT_INTERVAL)

    async def _serve(self, socket: ClientConnection) -> None:
        async for message in socket:
            if isinstance(message, bytes):
                channel, data = unframe(message)
                writer = self.channels.get(channel)
                if writer is not None:
                    writer.write(data)
                    await writer.drain()
                continue
            await self._handle(decode(message))

    async def _send(self, message: FleetMessage | bytes) -> None:
        socket = self._socket
        if socket is None:
            raise ConnectionError("not connected")
        async with self._send_lock:
            await socket.send(message if isinstance(message, bytes) else encode(message))

    async def _handle(self, message: FleetMessage) -> None:
        if isinstance(message, Call):
            self._spawn(self._answer(message))  # a container's start takes a while: not in the way of channels
        elif isinstance(message, Open):
            await self._open(message)
        elif isinstance(message, Close):
            writer = self.channels.pop(message.channel, None)
            if writer is not None:
                writer.close()
        elif isinstance(message, Drain):
            self.draining = True
        else:
            raise ProtocolError(f"a provisioner does not send {message.kind}")

    async def _answer(self, call: Call) -> None:
        try:
            result = await self._perform(call.method, call.params)
            answer = Answer(id=call.id, result=result)
        except (ProviderError, ValueError, KeyError, OSError) as error:
            answer = Answer(id=call.id, error=f"{type(error).__name__}: {error}"[:2000])
        with contextlib.suppress(ConnectionError, websockets.exceptions.ConnectionClosed):
            await self._send(answer)

    async def _perform(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        container_id = str(params["containerId"])
        if method == "create":
            container_type = ContainerType.model_validate(params["containerType"])
            self.endpoints[container_id] = await self.provider.create(
                container_id, container_type, str(params["secret"])
            )
            return {}
        if method == "destroy":
            await self._destroy(container_id)
            return {}
        if method == "alive":
            return {"alive": container_id in self.endpoints and await self.provider.alive(container_id)}
        raise ValueError(f"unknown call {method!r}")

    async def _destroy(self, container_id: str) -> None:
        self.endpoints.pop(container_id, None)
        await self.provider.destroy(container_id)

    async def _open(self, message: Open) -> None:
        """A channel to one of this worker's own agents, and nothing else."""
        endpoint = self.endpoints.get(message.container_id)
        try:
            if endpoint is None:
                raise ConnectionError(f"no container {message.container_id} here")
            if endpoint.host.startswith("unix:"):  # an agent without network: its socket file
                reader, writer = await asyncio.open_unix_connection(endpoint.host.removeprefix("unix:"))
            else:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
        except OSError as error:
            log.warning("worker %s: channel %d to %s: %s", self.name, message.channel, message.container_id, error)
            with contextlib.suppress(ConnectionError, websockets.exceptions.ConnectionClosed):
                await self._send(Close(channel=message.channel))
            return
        self.channels[message.channel] = writer
        self._spawn(self._pump(message.channel, reader, writer))

    async def _pump(self, channel: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(CHUNK):
                await self._send(frame(channel, data))
            if self.channels.pop(channel, None) is not None:
                await self._send(Close(channel=channel))
        except (ConnectionError, OSError, websockets.exceptions.ConnectionClosed):
            pass
        finally:
            self.channels.pop(channel, None)
            writer.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for container_id in list(self.endpoints):
            with contextlib.suppress(ProviderError, OSError):
                await self._destroy(container_id)
        await self.provider.close()
