"""asyncio client for the infrax agent protocol v1 (used by the executioner).

Every call opens its own connection, authenticates with ``hello`` and sends one
request, mirroring the agent's one-request-per-connection design.

Example::

    client = AgentClient("127.0.0.1", port, secret)
    async with client.run({"runId": "r1", "bootstrapper": url, "maxRunTime": 600}) as stream:
        async for message in stream:
            ...  # "accepted", "started", "output", "gap", finally "exit"
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

from infrax.agent.protocol import (
    PROTOCOL_VERSION,
    STREAM_LIMIT,
    UNIX_PREFIX,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    read_message,
    set_keepalive,
)

__all__ = [
    "AgentClient",
    "AgentConnectionLost",
    "AgentError",
    "AgentUnauthorized",
    "AgentUnreachable",
    "RunStream",
]

# Code used for answers the agent should never have sent.
BAD_RESPONSE = "bad-response"
ARTIFACT_CHUNK = 1 << 20


class AgentError(Exception):
    """The agent answered with an ``error`` message (or with nonsense: code ``bad-response``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class AgentUnauthorized(AgentError):
    """The agent rejected the secret."""


class AgentConnectionLost(Exception):
    """The connection broke before the expected answer (for runs: before ``exit``)."""


class AgentUnreachable(Exception):
    """No connection could be made, or the agent did not answer in time."""


class _Connection:
    """One authenticated connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, address: str) -> None:
        self.reader = reader
        self.writer = writer
        self.address = address
        self.welcome: dict[str, Any] = {}

    @classmethod
    async def open(
        cls, host: str, port: int, secret: str, timeout: float, request: dict[str, Any] | None = None
    ) -> _Connection:
        """Connect and authenticate. `request`, if given, goes out with the `hello`, in the same
        write: the agent reads it only once the hello is accepted, and a round trip is saved."""
        address = host if host.startswith(UNIX_PREFIX) else f"{host}:{port}"
        if host.startswith(UNIX_PREFIX):  # an agent in a container without a network: its socket file
            opening = asyncio.open_unix_connection(host[len(UNIX_PREFIX) :], limit=STREAM_LIMIT)
        else:
            opening = asyncio.open_connection(host, port, limit=STREAM_LIMIT)
        try:
            # wait_for, not asyncio.timeout: callers bound the whole call with their own timeout, and
            # on Python 3.11 two nested asyncio.timeout blocks that expire together leave a stray
            # cancellation behind that hits the caller's next await.
            reader, writer = await asyncio.wait_for(opening, timeout)
        except TimeoutError:
            raise AgentUnreachable(f"cannot connect to agent at {address}: timed out after {timeout:g}s") from None
        except OSError as exc:
            raise AgentUnreachable(f"cannot connect to agent at {address}: {exc.strerror or exc}") from None
        connection = cls(reader, writer, address)
        set_keepalive(writer)
        try:
            hello = {"type": MessageType.HELLO, "protocol": PROTOCOL_VERSION, "secret": secret}
            await connection.send(hello, *([request] if request is not None else []))
            welcome = await connection.receive(timeout, waiting_for="welcome")
            if welcome["type"] != MessageType.WELCOME or welcome.get("protocol") != PROTOCOL_VERSION:
                raise AgentError(BAD_RESPONSE, f"agent at {address} answered hello with {welcome!r}")
        except BaseException:
            await connection.close()
            raise
        connection.welcome = welcome
        return connection

    async def send(self, *messages: dict[str, Any]) -> None:
        try:
            self.writer.write(b"".join(encode(message) for message in messages))
            await self.writer.drain()
        except ConnectionError as exc:
            raise AgentConnectionLost(f"connection to agent at {self.address} lost while sending: {exc}") from None

    async def receive(self, timeout: float | None = None, *, waiting_for: str = "an answer") -> dict[str, Any]:
        """Next message; ``error`` messages are raised as AgentError."""
        try:
            message = await asyncio.wait_for(read_message(self.reader), timeout)  # see `open`
        except TimeoutError:
            raise AgentUnreachable(f"agent at {self.address} sent no {waiting_for} within {timeout:g}s") from None
        except ProtocolError as exc:
            raise AgentError(BAD_RESPONSE, f"agent at {self.address} sent an invalid message: {exc}") from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            what = exc or type(exc).__name__
            raise AgentConnectionLost(
                f"connection to agent at {self.address} lost while waiting for {waiting_for}: {what}"
            ) from None
        if message is None:
            raise AgentConnectionLost(
                f"agent at {self.address} closed the connection while we waited for {waiting_for}"
            )
        if message["type"] == MessageType.ERROR:
            code = str(message.get("code", BAD_RESPONSE))
            text = f"agent at {self.address}: {message.get('message', '')}"
            raise (AgentUnauthorized if code == ErrorCode.UNAUTHORIZED else AgentError)(code, text)
        return message

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class AgentClient:
    """Talks to one agent. Cheap to create; holds no connection between calls."""

    def __init__(
        self,
        host: str,
        port: int,
        secret: str,
        connect_timeout: float = 5.0,
        request_timeout: float = 10.0,
    ) -> None:
        self.host = host
        self.port = port
        self._secret = secret
        self.connect_timeout = connect_timeout
        # How long to wait for an immediate answer (heartbeat, cancelled, accepted).
        self.request_timeout = request_timeout

    @property
    def address(self) -> str:
        """``host:port`` of the agent, for messages."""
        return f"{self.host}:{self.port}"

    async def _connect(self, request: dict[str, Any] | None = None) -> _Connection:
        return await _Connection.open(self.host, self.port, self._secret, self.connect_timeout, request)

    async def _request(self, message: dict[str, Any], answer: str) -> dict[str, Any]:
        connection = await self._connect(message)
        try:
            reply = await connection.receive(self.request_timeout, waiting_for=f"{answer!r} answer")
        finally:
            await connection.close()
        if reply["type"] != answer:
            raise AgentError(BAD_RESPONSE, f"agent at {self.address} answered {message['type']!r} with {reply!r}")
        return reply

    async def heartbeat(self) -> dict[str, Any]:
        """Ask for the agent's status: ``{"type": "heartbeat", "busy", "runId", "uptime", "runsCompleted"}``."""
        return await self._request({"type": MessageType.HEARTBEAT}, MessageType.HEARTBEAT)

    def run(self, request: Mapping[str, Any]) -> RunStream:
        """Start a run and stream its messages.

        ``request`` holds the ``run`` fields (``runId``, ``bootstrapper``, ``maxRunTime``,
        ``bootstrapperArguments``, ``files``, ``env``); ``type`` is added. Iterating the
        result yields ``accepted``, ``started``, ``output``/``gap`` and finally ``exit``.
        """
        message = {**request, "type": MessageType.RUN}
        return RunStream(self, message, str(request.get("runId", "")))

    def attach(self, run_id: str, from_seq: int = 0) -> RunStream:
        """Re-attach to the agent's current or most recent run: output replayed from ``from_seq``, then live."""
        message: dict[str, Any] = {"type": MessageType.ATTACH, "runId": run_id}
        if from_seq:
            message["fromSeq"] = from_seq
        return RunStream(self, message, run_id)

    async def fetch_artifact(self, run_id: str, name: str, chunk_size: int = ARTIFACT_CHUNK) -> AsyncIterator[bytes]:
        """The bytes of one artifact of an ended run, a chunk at a time, over a connection of its
        own; AgentError (code `no-artifact`) when the run left no such file, AgentConnectionLost
        when fewer bytes came than announced. The agent's side pauses while a chunk is handled, so
        what is in memory stays a chunk or two, whatever the artifact's size."""
        connection = await self._connect({"type": MessageType.FETCH_ARTIFACT, "runId": run_id, "name": name})
        try:
            header = await connection.receive(self.request_timeout, waiting_for=f"artifact {name!r}")
            size = header.get("size")
            if header["type"] != MessageType.ARTIFACT or not isinstance(size, int) or size < 0:
                raise AgentError(BAD_RESPONSE, f"agent at {self.address} answered an artifact fetch with {header!r}")
            remaining = size
            while remaining:
                try:
                    chunk = await asyncio.wait_for(
                        connection.reader.read(min(remaining, chunk_size)), self.request_timeout
                    )
                except (TimeoutError, ConnectionError) as exc:
                    chunk, cause = b"", f": {exc or type(exc).__name__}"
                else:
                    cause = ""
                if not chunk:
                    raise AgentConnectionLost(
                        f"artifact {name!r} of run {run_id!r} from {self.address} ended {remaining} bytes "
                        f"short of its {size}{cause}"
                    )
                remaining -= len(chunk)
                yield chunk
        finally:
            await connection.close()

    async def stage(self, run_id: str, name: str, size: int, chunks: AsyncIterator[bytes]) -> None:
        """Put a file in place for the run `run_id` is about to be (`$INFRAX_FETCHES_DIR/<name>`),
        streamed from `chunks`, which must give exactly `size` bytes."""
        connection = await self._connect({"type": MessageType.STAGE, "runId": run_id, "name": name, "size": size})
        try:
            sent = 0
            async for chunk in chunks:
                sent += len(chunk)
                if sent > size:
                    raise ValueError(f"{name}: more than the {size} bytes announced")
                try:
                    connection.writer.write(chunk)
                    await connection.writer.drain()
                except ConnectionError as exc:
                    raise AgentConnectionLost(
                        f"agent at {self.address} hung up while {name} was staged: {exc}"
                    ) from None
            if sent != size:
                raise ValueError(f"{name}: {sent} bytes, not the {size} announced")
            reply = await connection.receive(self.request_timeout, waiting_for=f"{name!r} staged")
            if reply["type"] != MessageType.STAGED:
                raise AgentError(BAD_RESPONSE, f"agent at {self.address} answered a staging with {reply!r}")
        finally:
            await connection.close()

    async def source_state(self, key: str) -> dict[str, list[str]]:
        """The revisions the agent's caches of `key` hold, by VCS (`git`, `hg`)."""
        reply = await self._request({"type": MessageType.SOURCE_STATE, "key": key}, MessageType.SOURCE_STATE)
        return {
            vcs: [r for r in reply[vcs] if isinstance(r, str)] if isinstance(reply.get(vcs), list) else []
            for vcs in ("git", "hg")
        }

    async def cancel(self, run_id: str) -> bool:
        """Cancel a run over a new connection; True if that run was running on the agent."""
        reply = await self._request({"type": MessageType.CANCEL, "runId": run_id}, MessageType.CANCELLED)
        return bool(reply.get("found"))


class RunStream(AsyncIterator[dict[str, Any]]):
    """Messages of one run over one connection. The connection opens on first iteration.

    Ends after the ``exit`` message. Raises AgentError for ``error`` answers and
    AgentConnectionLost if the connection breaks before ``exit`` (the run goes on
    in the agent; use :meth:`AgentClient.attach` to resume).
    """

    def __init__(self, client: AgentClient, request: dict[str, Any], run_id: str) -> None:
        self._client = client
        self._request = request
        self.run_id = run_id
        self._connection: _Connection | None = None
        # Only a run request gets an immediate answer ("accepted"); an attach may
        # legitimately wait while the bootstrapper is still being fetched.
        self._first = request["type"] == MessageType.RUN
        self._done = False
        self.last_seq: int | None = None
        self.exit: dict[str, Any] | None = None

    def __aiter__(self) -> RunStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._done:
            raise StopAsyncIteration
        try:
            if self._connection is None:
                self._connection = await self._client._connect(self._request)
            # Runs may legitimately stay silent for a long time, so only the
            # first answer is bounded; TCP keepalive notices dead peers.
            timeout = self._client.request_timeout if self._first else None
            self._first = False
            message = await self._connection.receive(timeout, waiting_for=f"messages of run {self.run_id!r}")
        except AgentConnectionLost as exc:
            await self._finish()
            raise AgentConnectionLost(
                f"{exc}; run {self.run_id!r} had not finished (last seq {self.last_seq})"
            ) from None
        except BaseException:
            await self._finish()
            raise
        kind = message["type"]
        if kind == MessageType.OUTPUT:
            self.last_seq = message.get("seq")
        elif kind == MessageType.EXIT:
            self.exit = message
            await self._finish()
        return message

    async def cancel(self) -> None:
        """Cancel the run; the stream then ends with an ``exit`` message (status ``cancelled``)."""
        if self._done and self.exit is not None:
            return
        if self._connection is not None and not self._done:
            with contextlib.suppress(AgentConnectionLost):
                await self._connection.send({"type": MessageType.CANCEL, "runId": self.run_id})
                return
        if self._connection is None and not self._done:
            # Nothing was sent yet: there is no run to cancel.
            self._done = True
            return
        await self._client.cancel(self.run_id)

    async def _finish(self) -> None:
        self._done = True
        if self._connection is not None:
            await self._connection.close()

    async def aclose(self) -> None:
        """Close the connection without cancelling; the run continues in the agent."""
        await self._finish()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
