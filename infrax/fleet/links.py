"""What the provisioner knows of each worker and of each remote container, and the connection's
constants: the gateway (`gateway.py`) keeps these, the pool provider and the REST API read them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket

from infrax.fleet.protocol import FleetMessage, encode, frame
from infrax.model import new_id

CHUNK = 64 * 1024
CALL_TIMEOUT = 30.0
BEAT_INTERVAL = 1.0  # how often a worker beats
SILENCE = 3.0  # seconds without a word from a worker after which it counts as away
REFUSED = 4403  # WebSocket close codes of the application's range: 4000 + the HTTP status meant
UNAUTHORIZED = 4401
BAD_MESSAGE = 4400
REMOVED = 4410  # gone, for good: the worker stops


def worker_scope(pool: str) -> str:
    return f"provisioner:worker:{pool}"


@dataclass
class RemoteContainer:
    id: str
    pool: str
    worker: str
    relay: asyncio.Server | None = None
    port: int = 0
    channels: set[int] = field(default_factory=set)  # its connections through the relay now


@dataclass
class WorkerLink:
    """One worker, whether connected now or not."""

    pool: str
    name: str
    id: str = field(default_factory=new_id)
    capacity: int = 0
    agent_version: str = ""
    socket: WebSocket | None = None
    connected_at: float = 0.0
    last_seen: float = 0.0
    away_since: float | None = None
    draining: bool = False
    containers: set[str] = field(default_factory=set)
    channels: dict[int, asyncio.StreamWriter] = field(default_factory=dict)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    back: asyncio.Event = field(default_factory=asyncio.Event)  # set while connected

    @property
    def connected(self) -> bool:
        return self.socket is not None

    async def send(self, message: FleetMessage) -> None:
        socket = self.socket
        if socket is None:
            raise ConnectionError(f"worker {self.name} of pool {self.pool} is not connected")
        async with self.send_lock:
            await socket.send_text(encode(message))

    async def send_bytes(self, channel: int, data: bytes) -> None:
        socket = self.socket
        if socket is None:
            raise ConnectionError(f"worker {self.name} of pool {self.pool} is not connected")
        async with self.send_lock:
            await socket.send_bytes(frame(channel, data))


class WorkerCallFailed(Exception):
    """The worker answered a call with an error; the message is the worker's."""


class UnknownWorker(Exception):
    """No worker has that id."""


class WorkerBusy(Exception):
    """The worker still has containers."""


class NoRoom(Exception):
    """No connected worker of the pool can take another container."""
