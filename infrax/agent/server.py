"""TCP server side of the infrax agent: authentication, request dispatch, streaming.

One request per connection (after ``hello``/``welcome``); at most one run at a
time. Runs are independent of connections: a client that disconnects can
``attach`` again later. Standard library only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import sys
import time
from typing import Any, Final, TextIO

from infrax.agent import transfers
from infrax.agent.protocol import (
    AGENT_NAME,
    PROTOCOL_VERSION,
    STREAM_LIMIT,
    UNIX_PREFIX,
    ErrorCode,
    MessageType,
    ProtocolError,
    encode,
    error_message,
    parse_run_request,
    read_message,
    send,
    set_keepalive,
)
from infrax.agent.runner import Run, RunSettings

__all__ = ["READY_PREFIX", "Agent", "serve"]

log = logging.getLogger("infrax.agent")

READY_PREFIX: Final = "INFRAX-AGENT-READY"
# An idle, unauthenticated connection must not stay open forever.
HELLO_TIMEOUT: Final = 10.0
REQUEST_TIMEOUT: Final = 10.0
REFUSAL_LINGER: Final = 1.0  # seconds a refused client has to read the refusal and hang up
# On shutdown, connections still streaming get this long to flush the exit message.
SHUTDOWN_FLUSH_TIMEOUT: Final = 1.0
PARENT_CHECK_INTERVAL: Final = 1.0

Writer = asyncio.StreamWriter
Reader = asyncio.StreamReader


class Agent:
    """The agent's state: the shared secret, the current run and connection bookkeeping."""

    def __init__(self, secret: str, settings: RunSettings) -> None:
        if not secret:
            raise ValueError("the agent secret must not be empty")
        self._secret = secret.encode("utf-8")
        self.settings = settings
        # The most recent run, running or finished: what attach can reach.
        self._last_run: Run | None = None
        # Finished runs before _last_run; derived rather than counted in a done
        # callback so a heartbeat right after an exit message is already exact.
        self._earlier_runs = 0
        self._started_at = time.monotonic()
        self._connections: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.last_contact = time.monotonic()  # of a client that knew the secret

    @property
    def runs_completed(self) -> int:
        """Number of runs that have finished, whatever their status."""
        last = self._last_run
        return self._earlier_runs + (1 if last is not None and last.finished else 0)

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def running(self) -> Run | None:
        """The run in progress, if any."""
        run = self._last_run
        return run if run is not None and not run.finished else None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Start listening; returns the bound (host, port). A host `unix:PATH` listens on that socket
        file instead (mode 0600), for a container with no network at all: port 0 then."""
        if host.startswith(UNIX_PREFIX):
            path = host[len(UNIX_PREFIX) :]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # left by an earlier agent
            self._server = await asyncio.start_unix_server(self._on_connection, path, limit=STREAM_LIMIT)
            os.chmod(path, 0o600)
            return host, 0
        self._server = await asyncio.start_server(self._on_connection, host, port, limit=STREAM_LIMIT)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def shutdown(self) -> None:
        """Stop accepting connections, cancel the current run and close all connections."""
        if self._server is not None:
            self._server.close()
        run = self.running
        if run is not None:
            run.cancel("agent is shutting down")
            # Bounded by the kill grace period: the process group is SIGKILLed after it.
            await run.wait()
        if self._connections:
            # Give streaming connections the chance to deliver the exit message.
            _, pending = await asyncio.wait(self._connections, timeout=SHUTDOWN_FLUSH_TIMEOUT)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- connections ---------------------------------------------------------

    async def _on_connection(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        try:
            set_keepalive(writer)
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            log.debug("connection from %s dropped", peer)
        except Exception:  # one broken connection must not stop the agent
            log.exception("internal error while serving %s", peer)
            with contextlib.suppress(Exception):
                await send(writer, error_message(ErrorCode.INTERNAL, "internal agent error; see agent log"))
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(self, reader: Reader, writer: Writer) -> None:
        hello = await self._receive(reader, writer, "hello", HELLO_TIMEOUT)
        if hello is None:
            return
        refusal = self._check_hello(hello)
        if refusal is not None:
            log.warning("refused connection from %s: %s", writer.get_extra_info("peername"), refusal["message"])
            await send(writer, refusal)
            # A client may have sent its request behind the hello. Closing with it unread would
            # reset the connection, and the client might lose the refusal: let it hang up first.
            with contextlib.suppress(Exception):
                writer.write_eof()
                await asyncio.wait_for(reader.read(), REFUSAL_LINGER)
            return
        self.last_contact = time.monotonic()
        running = self.running
        await send(
            writer,
            {
                "type": MessageType.WELCOME,
                "protocol": PROTOCOL_VERSION,
                "agent": AGENT_NAME,
                "busy": running is not None,
                "runId": running.run_id if running else None,
            },
        )

        request = await self._receive(reader, writer, "request", REQUEST_TIMEOUT)
        if request is None:
            return
        kind = request["type"]
        if kind == MessageType.HEARTBEAT:
            await send(writer, self._heartbeat())
        elif kind == MessageType.RUN:
            await self._handle_run(reader, writer, request)
        elif kind == MessageType.ATTACH:
            await self._handle_attach(reader, writer, request)
        elif kind == MessageType.FETCH_ARTIFACT:
            await transfers.send_artifact(writer, self._last_run, request)
        elif kind == MessageType.STAGE:
            await transfers.receive_staged(reader, writer, self.running, self.settings.workdir, request)
        elif kind == MessageType.SOURCE_STATE:
            await transfers.answer_source_state(writer, self.settings.workdir, request)
        elif kind == MessageType.CANCEL:
            await self._handle_cancel(writer, request)
        else:
            await send(writer, error_message(ErrorCode.BAD_REQUEST, f"unknown request type {kind!r}"))

    async def _receive(self, reader: Reader, writer: Writer, what: str, timeout: float) -> dict[str, Any] | None:
        """Read one message; answers and returns None on timeout, bad input or EOF."""
        try:
            return await asyncio.wait_for(read_message(reader), timeout)
        except TimeoutError:
            await send(writer, error_message(ErrorCode.BAD_REQUEST, f"no {what} received within {timeout:g}s"))
        except ProtocolError as exc:
            await send(writer, error_message(exc.code, exc.message))
        return None

    def _check_hello(self, hello: dict[str, Any]) -> dict[str, Any] | None:
        if hello["type"] != MessageType.HELLO:
            return error_message(ErrorCode.BAD_REQUEST, f"expected a hello message first, got {hello['type']!r}")
        protocol = hello.get("protocol")
        if protocol != PROTOCOL_VERSION or isinstance(protocol, bool):
            return error_message(
                ErrorCode.UNSUPPORTED_PROTOCOL,
                f"this agent speaks protocol {PROTOCOL_VERSION}, the client asked for {protocol!r}",
            )
        secret = hello.get("secret")
        if not isinstance(secret, str):
            return error_message(ErrorCode.UNAUTHORIZED, "hello carries no secret")
        # Constant-time comparison: response timing must not reveal the secret.
        if not hmac.compare_digest(secret.encode("utf-8", "surrogatepass"), self._secret):
            return error_message(ErrorCode.UNAUTHORIZED, "wrong secret")
        return None

    # -- requests ------------------------------------------------------------

    def _heartbeat(self) -> dict[str, Any]:
        running = self.running
        return {
            "type": MessageType.HEARTBEAT,
            "busy": running is not None,
            "runId": running.run_id if running else None,
            "uptime": round(time.monotonic() - self._started_at, 3),
            "runsCompleted": self.runs_completed,
            # Idle and broken (no fork, no disk, no memory): the provisioner retires it.
            "problem": None if running is not None else self.settings.problem(fork=False),
        }

    async def _handle_run(self, reader: Reader, writer: Writer, message: dict[str, Any]) -> None:
        try:
            request = parse_run_request(message)
        except ProtocolError as exc:
            await send(writer, error_message(exc.code, f"invalid run request: {exc.message}"))
            return
        running = self.running
        if running is not None:
            await send(
                writer,
                error_message(
                    ErrorCode.BUSY, f"agent is busy with run {running.run_id!r}; cannot start {request.run_id!r}"
                ),
            )
            return
        # No await between the busy check and claiming the slot, so two
        # concurrent run requests cannot both get in.
        run = Run(request, self.settings)
        if self._last_run is not None:
            self._earlier_runs += 1
        self._last_run = run
        run.start().add_done_callback(self._on_run_done)
        log.info("run %s accepted (bootstrapper %s)", run.run_id, request.bootstrapper)
        await send(writer, {"type": MessageType.ACCEPTED, "runId": run.run_id})
        await self._stream(reader, writer, run, 0)

    async def _handle_attach(self, reader: Reader, writer: Writer, message: dict[str, Any]) -> None:
        run_id = message.get("runId")
        from_seq = message.get("fromSeq", 0)
        if not isinstance(run_id, str) or not run_id:
            await send(writer, error_message(ErrorCode.BAD_REQUEST, "field 'runId' must be a non-empty string"))
            return
        if isinstance(from_seq, bool) or not isinstance(from_seq, int) or from_seq < 0:
            await send(writer, error_message(ErrorCode.BAD_REQUEST, "field 'fromSeq' must be a non-negative integer"))
            return
        run = self._last_run
        if run is None or run.run_id != run_id:
            known = f"the most recent run is {run.run_id!r}" if run else "it has not run anything yet"
            await send(writer, error_message(ErrorCode.UNKNOWN_RUN, f"this agent has no run {run_id!r}; {known}"))
            return
        log.info("client attached to run %s from seq %d", run_id, from_seq)
        await self._stream(reader, writer, run, from_seq)

    async def _handle_cancel(self, writer: Writer, message: dict[str, Any]) -> None:
        run_id = message.get("runId")
        if not isinstance(run_id, str) or not run_id:
            await send(writer, error_message(ErrorCode.BAD_REQUEST, "field 'runId' must be a non-empty string"))
            return
        running = self.running
        found = running is not None and running.run_id == run_id and running.cancel()
        log.info("cancel for run %s (found: %s)", run_id, found)
        await send(writer, {"type": MessageType.CANCELLED, "runId": run_id, "found": found})

    def _on_run_done(self, task: asyncio.Task[None]) -> None:
        if os.getpid() == 1:
            _reap_orphans()

    # -- streaming -----------------------------------------------------------

    async def _stream(self, reader: Reader, writer: Writer, run: Run, from_seq: int) -> None:
        """Forward the run's messages until ``exit``, while listening for ``cancel``."""
        forward = asyncio.create_task(_forward(writer, run, from_seq))
        listen = asyncio.create_task(_listen(reader, run))
        try:
            done, _ = await asyncio.wait({forward, listen}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            forward.cancel()
            listen.cancel()
        await asyncio.gather(forward, listen, return_exceptions=True)
        if forward not in done or forward.exception() is not None:
            # The run keeps going; its output stays buffered for a later attach.
            log.info("client of run %s went away; the run continues", run.run_id)


async def _forward(writer: Writer, run: Run, from_seq: int) -> None:
    async with contextlib.aclosing(run.log.follow(from_seq)) as batches:
        async for batch in batches:
            # One write per batch: many small output messages cost one syscall.
            writer.write(b"".join(encode(message) for message in batch))
            await writer.drain()


async def _listen(reader: Reader, run: Run) -> None:
    """Handle messages sent while a run streams; returns when the client goes away."""
    while True:
        try:
            message = await read_message(reader)
        except (ProtocolError, asyncio.IncompleteReadError, ConnectionError) as exc:
            log.warning("bad input on the stream of run %s: %s", run.run_id, exc)
            return
        if message is None:
            return
        if message["type"] == MessageType.CANCEL and message.get("runId") == run.run_id:
            log.info("cancel for run %s on its stream", run.run_id)
            run.cancel()
        else:
            # The stream answers nothing but the run's own messages; a reply here
            # would be ambiguous, so unexpected input is only logged.
            log.warning("ignoring %r message on the stream of run %s", message["type"], run.run_id)


def _reap_orphans() -> None:
    """Collect exited orphans; only needed when the agent is the container's PID 1.

    Orphaned grandchildren are re-parented to PID 1, and without an init process
    nobody else would wait() for them. Called right after a run's own process has
    been reaped, when the agent has no other children it is waiting for.
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0) but is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    # Polling is the only portable way to notice an unrelated process dying.
    while not stop.is_set():
        if not _process_alive(pid):
            log.warning("parent process %d is gone; shutting down", pid)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PARENT_CHECK_INTERVAL)


async def _watch_lifeline(fd: int, stop: asyncio.Event) -> None:
    """Stop when the pipe from whoever started this agent closes: it is gone (a worker killed with
    -9 closes it too), and a run nobody can hand on must not go on alone."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0))
    while await reader.read(4096):
        pass
    log.warning("the process that started this agent is gone; shutting down")
    stop.set()


async def _watch_contact(agent: Agent, timeout: float, stop: asyncio.Event) -> None:
    """Stop once idle with nobody in touch for `timeout` seconds. A provisioner heartbeats its
    containers every few seconds, a restarted one adopts them: silence this long means none will."""
    while not stop.is_set():
        idle = agent.running is None and not agent.connections
        if idle and time.monotonic() - agent.last_contact > timeout:
            log.warning("nobody has been in touch for %.0f s; shutting down", timeout)
            stop.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), min(timeout, PARENT_CHECK_INTERVAL))


async def serve(
    secret: str,
    settings: RunSettings,
    host: str,
    port: int,
    parent_pid: int | None = None,
    ready_stream: TextIO = sys.stdout,
    orphan_timeout: float = 0.0,
    lifeline: int | None = None,
) -> int:
    """Run the agent until SIGTERM/SIGINT (or the parent process dies); returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    agent = Agent(secret, settings)
    try:
        bound_host, bound_port = await agent.start(host, port)
    except OSError as exc:
        print(f"infrax-agent: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 2
    ready = json.dumps({"host": bound_host, "port": bound_port, "protocol": PROTOCOL_VERSION})
    ready_stream.write(f"{READY_PREFIX} {ready}\n")
    ready_stream.flush()
    log.info("listening on %s:%d (workdir %s)", bound_host, bound_port, settings.workdir)

    watchers = []
    if parent_pid is not None:
        watchers.append(asyncio.create_task(_watch_parent(parent_pid, stop)))
    if orphan_timeout:
        watchers.append(asyncio.create_task(_watch_contact(agent, orphan_timeout, stop)))
    if lifeline is not None:
        watchers.append(asyncio.create_task(_watch_lifeline(lifeline, stop)))
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        for watcher in watchers:
            watcher.cancel()
        await agent.shutdown()
    return 0
