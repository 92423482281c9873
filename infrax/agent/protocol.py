"""Wire format of the infrax agent protocol v1, shared by the agent and its client.

Messages are UTF-8 JSON objects, one per line (newline-delimited JSON), each with a
``"type"`` field. The full description lives in ``docs/protocols/agent-v1.md``.

Standard library only: this module is imported by the agent inside bare containers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
from dataclasses import dataclass, field
from typing import Any, Final

from infrax.agent import PROTOCOL_VERSION
from infrax.agent.checkout import KEY, REVISION

__all__ = [
    "AGENT_NAME",
    "MAX_LINE_BYTES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "MessageType",
    "ProtocolError",
    "RunRequest",
    "RunStatus",
    "decode",
    "encode",
    "error_message",
    "parse_run_request",
    "read_message",
    "send",
    "set_keepalive",
]

AGENT_NAME: Final = "infrax-agent/0.1"

# One line (JSON text plus the newline) may not exceed this many bytes.
MAX_LINE_BYTES: Final = 1024 * 1024

# The StreamReader limit applies to the line without its terminator, and a line
# that is exactly MAX_LINE_BYTES long (newline included) must still be accepted.
STREAM_LIMIT: Final = MAX_LINE_BYTES
# An agent's address `unix:/path/agent.sock`: a socket file instead of host and port.
UNIX_PREFIX: Final = "unix:"


class MessageType:
    """Values of the ``"type"`` field."""

    HELLO: Final = "hello"
    WELCOME: Final = "welcome"
    ERROR: Final = "error"
    HEARTBEAT: Final = "heartbeat"
    RUN: Final = "run"
    ACCEPTED: Final = "accepted"
    STARTED: Final = "started"
    OUTPUT: Final = "output"
    GAP: Final = "gap"
    EXIT: Final = "exit"
    CANCEL: Final = "cancel"
    CANCELLED: Final = "cancelled"
    ATTACH: Final = "attach"
    FETCH_ARTIFACT: Final = "fetch-artifact"
    ARTIFACT: Final = "artifact"
    STAGE: Final = "stage"
    SOURCE_STATE: Final = "source-state"
    STAGED: Final = "staged"


class ErrorCode:
    """Values of the ``"code"`` field of ``error`` messages."""

    UNAUTHORIZED: Final = "unauthorized"
    UNSUPPORTED_PROTOCOL: Final = "unsupported-protocol"
    BAD_REQUEST: Final = "bad-request"
    BUSY: Final = "busy"
    UNKNOWN_RUN: Final = "unknown-run"
    NO_ARTIFACT: Final = "no-artifact"
    INTERNAL: Final = "internal"


class RunStatus:
    """Values of the ``"status"`` field of ``exit`` messages."""

    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    TIMEOUT: Final = "timeout"
    CANCELLED: Final = "cancelled"
    ERROR: Final = "error"


class ProtocolError(Exception):
    """A message could not be decoded or is invalid; ``code`` is the error code to answer with."""

    def __init__(self, message: str, code: str = ErrorCode.BAD_REQUEST) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(message: dict[str, Any]) -> bytes:
    """Serialise one message as a JSON line (terminated by ``\\n``)."""
    # ensure_ascii=False keeps non-ASCII output at 2-4 bytes per character instead
    # of 6-12; every string we emit is known to be encodable (see _check_text).
    text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.encode("utf-8") + b"\n"


async def send(writer: asyncio.StreamWriter, *messages: dict[str, Any]) -> None:
    """Write messages as JSON lines, in one write."""
    writer.write(b"".join(encode(message) for message in messages))
    await writer.drain()


def decode(line: bytes) -> dict[str, Any]:
    """Parse one received line into a message dict.

    Raises ProtocolError if the line is not a JSON object with a string ``type``.
    """
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line exceeds {MAX_LINE_BYTES} bytes")
    try:
        value = json.loads(line)
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"line is not valid UTF-8: {exc.reason}") from None
    except ValueError as exc:
        raise ProtocolError(f"line is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError("message must be a JSON object")
    if not isinstance(value.get("type"), str):
        raise ProtocolError("message has no string field 'type'")
    return value


async def read_message(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """Read and decode the next message; None when the peer closed the connection cleanly.

    The reader must have been created with ``limit=STREAM_LIMIT`` so that overlong
    lines are detected without buffering them whole.
    """
    try:
        line = await reader.readline()
    except ValueError:
        # StreamReader turns LimitOverrunError into ValueError for readline().
        raise ProtocolError(f"line exceeds {MAX_LINE_BYTES} bytes") from None
    if not line:
        return None
    if not line.endswith(b"\n"):
        # EOF in the middle of a line: the peer went away while writing.
        raise asyncio.IncompleteReadError(line, None)
    return decode(line)


def error_message(code: str, message: str) -> dict[str, Any]:
    """Build an ``error`` message."""
    return {"type": MessageType.ERROR, "code": code, "message": message}


@dataclass(frozen=True)
class RunRequest:
    """A validated ``run`` message."""

    run_id: str
    bootstrapper: str
    max_run_time: float
    arguments: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    bootstrapper_token: str | None = field(default=None, repr=False)  # never in a log line
    bootstrapper_content: bytes | None = field(default=None, repr=False)  # given inline: nothing to fetch
    checkout: dict[str, Any] | None = None  # {vcs, key, revision, sparse?}: see infrax.agent.checkout


# An inline bootstrapper travels in the run message's line (MAX_LINE_BYTES): 512 KiB at most.
MAX_INLINE_BOOTSTRAPPER: Final = 512 * 1024
MAX_INLINE_BOOTSTRAPPER_CHARS: Final = (MAX_INLINE_BOOTSTRAPPER + 2) // 3 * 4
# Keeps run IDs usable in log lines and directory names without surprises.
MAX_RUN_ID_LENGTH: Final = 256


def _check_text(value: object, name: str, *, allow_empty: bool = True) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"field '{name}' must be a string")
    if not allow_empty and not value:
        raise ProtocolError(f"field '{name}' must not be empty")
    if "\0" in value:
        # NUL bytes cannot be passed through execve() argv or environ.
        raise ProtocolError(f"field '{name}' must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(f"field '{name}' contains unpaired surrogates") from None
    return value


def _check_string_list(value: object, name: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ProtocolError(f"field '{name}' must be an array of strings")
    return tuple(_check_text(item, f"{name}[{index}]") for index, item in enumerate(value))


def parse_run_request(message: dict[str, Any]) -> RunRequest:
    """Validate a ``run`` message; ProtocolError names the offending field."""
    run_id = _check_text(message.get("runId"), "runId", allow_empty=False)
    if len(run_id) > MAX_RUN_ID_LENGTH:
        raise ProtocolError(f"field 'runId' must be at most {MAX_RUN_ID_LENGTH} characters")
    bootstrapper = _check_text(message.get("bootstrapper"), "bootstrapper", allow_empty=False)
    if not bootstrapper.startswith(("http://", "https://", "file://", "/")):
        raise ProtocolError("field 'bootstrapper' must be an http://, https:// or file:// URL or an absolute path")

    max_run_time = message.get("maxRunTime")
    # bool is an int subclass; "maxRunTime": true is a client bug, not one second.
    if (
        isinstance(max_run_time, bool)
        or not isinstance(max_run_time, int | float)
        or not math.isfinite(max_run_time)
        or max_run_time <= 0
    ):
        raise ProtocolError("field 'maxRunTime' must be a positive number of seconds")

    arguments = _check_string_list(message.get("bootstrapperArguments", []), "bootstrapperArguments")
    files = _check_string_list(message.get("files", []), "files")
    for index, name in enumerate(files):
        if "\n" in name:
            # files.txt holds one file per line.
            raise ProtocolError(f"field 'files[{index}]' must not contain newlines")

    raw_env = message.get("env", {})
    if not isinstance(raw_env, dict):
        raise ProtocolError("field 'env' must be an object mapping names to string values")
    env: dict[str, str] = {}
    for key, value in raw_env.items():
        _check_text(key, "env", allow_empty=False)
        if "=" in key:
            raise ProtocolError(f"field 'env' has invalid variable name {key!r} (contains '=')")
        env[key] = _check_text(value, f"env.{key}")

    token = message.get("bootstrapperToken")
    if token is not None:
        token = _check_text(token, "bootstrapperToken", allow_empty=False)
        if len(token) > 2000 or any(c in token for c in "\r\n"):
            raise ProtocolError("field 'bootstrapperToken' must be one line of at most 2000 characters")
        if not bootstrapper.startswith(("http://", "https://")):
            raise ProtocolError("field 'bootstrapperToken' goes only with an http:// or https:// bootstrapper")

    content = message.get("bootstrapperContent")
    if content is not None:
        if not isinstance(content, str) or len(content) > MAX_INLINE_BOOTSTRAPPER_CHARS:
            raise ProtocolError("field 'bootstrapperContent' must be base64 of at most 512 KiB")
        try:
            content = base64.b64decode(content, validate=True)
        except ValueError:
            raise ProtocolError("field 'bootstrapperContent' is not base64") from None

    return RunRequest(
        checkout=_parse_checkout(message.get("checkout")),
        bootstrapper_content=content,
        bootstrapper_token=token,
        run_id=run_id,
        bootstrapper=bootstrapper,
        max_run_time=float(max_run_time),
        arguments=arguments,
        files=files,
        env=env,
    )


def _parse_checkout(value: object) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError("field 'checkout' must be an object")
    if value.get("vcs") not in ("git", "hg"):
        raise ProtocolError("field 'checkout.vcs' must be 'git' or 'hg'")
    if not isinstance(value.get("key"), str) or not KEY.match(value["key"]):
        raise ProtocolError("field 'checkout.key' must be a word of letters, digits, '-' and '_'")
    if not isinstance(value.get("revision"), str) or not REVISION.match(value["revision"]):
        raise ProtocolError("field 'checkout.revision' must be 40 hexadecimal digits")
    sparse = value.get("sparse")
    if sparse is not None:
        paths = _check_string_list(sparse, "checkout.sparse")
        if not paths or len(paths) > 1000 or any(not p or p.startswith("-") for p in paths):
            raise ProtocolError("field 'checkout.sparse' must list 1 to 1000 paths, none starting with '-'")
        sparse = list(paths)
    shallow = value.get("shallow")
    if shallow is not None:
        nodes = _check_string_list(shallow, "checkout.shallow")
        if len(nodes) > 10_000 or not all(REVISION.match(n) for n in nodes):
            raise ProtocolError("field 'checkout.shallow' must list at most 10000 revisions of 40 hexadecimal digits")
        shallow = list(nodes)
    return {
        "vcs": value["vcs"],
        "key": value["key"],
        "revision": value["revision"],
        "sparse": sparse,
        "shallow": shallow,
    }


def set_keepalive(writer: asyncio.StreamWriter) -> None:
    """Enable TCP keepalive so a silently vanished peer is noticed within about a minute.

    Runs can be silent for a long time, so without keepalive a half-open
    connection (peer host gone, no RST) would never be detected.
    """
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # These options are Linux-specific; other platforms keep their defaults.
        for option, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
    except OSError:
        pass
