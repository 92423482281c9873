"""The worker connection's wire format, version 1 (docs/fleet.md; JSON Schemas in
`infrax/schemas/fleet/v1/`, generated from these models).

Text frames are JSON objects with a `kind`. Binary frames carry the agent protocol: a 4-byte
big-endian channel number, then the bytes of that channel.

    worker -> provisioner   hello, beat, answer, close
    provisioner -> worker   welcome, call, open, close, drain

A worker sends a `beat` every second: a provisioner that hears nothing of it for a few seconds
counts it away (a link can die without either end's TCP noticing for minutes).

A `call` (`create`, `destroy`, `alive`) is answered by one `answer` with the same `id`. An `open`
asks the worker to connect a channel to one of its own containers' agents (never to any other
address), a `close` ends a channel from either side.
"""

from __future__ import annotations

import struct
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from infrax.model import WireModel

VERSION = 1
POOL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
CONTAINER_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
MAX_CHANNEL = 2**32 - 1
_HEADER = struct.Struct(">I")


class FleetMessage(WireModel):
    kind: str
    version: Literal[1] = 1


class Hello(FleetMessage):
    """The worker's first message: who it is, which pool it joins, what it may run."""

    kind: Literal["hello"] = "hello"
    name: str = Field(pattern=NAME_PATTERN, description="the worker's name, unique in its pool (its host name)")
    pool: str = Field(pattern=POOL_PATTERN)
    capacity: int = Field(ge=1, le=10_000, description="containers it may run at once")
    agent_version: str = Field(max_length=50)
    containers: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="containers it still runs from an earlier connection: the provisioner keeps those it knows",
    )


class Welcome(FleetMessage):
    kind: Literal["welcome"] = "welcome"
    worker_id: str
    grace: float = Field(description="seconds the provisioner keeps the worker's containers while it is away")
    orphans: list[str] = Field(default_factory=list, description="containers of `hello` it no longer knows: stop them")


class Beat(FleetMessage):
    kind: Literal["beat"] = "beat"


class Call(FleetMessage):
    kind: Literal["call"] = "call"
    id: int = Field(ge=0)
    method: Literal["create", "destroy", "alive"]
    params: dict[str, Any] = Field(default_factory=dict)


class Answer(FleetMessage):
    kind: Literal["answer"] = "answer"
    id: int = Field(ge=0)
    result: dict[str, Any] | None = None
    error: str | None = Field(default=None, max_length=2000)


class Open(FleetMessage):
    kind: Literal["open"] = "open"
    channel: int = Field(ge=0, le=MAX_CHANNEL)
    container_id: str = Field(pattern=CONTAINER_ID)


class Close(FleetMessage):
    kind: Literal["close"] = "close"
    channel: int = Field(ge=0, le=MAX_CHANNEL)


class Drain(FleetMessage):
    kind: Literal["drain"] = "drain"


FLEET_MESSAGES: dict[str, type[FleetMessage]] = {
    "hello": Hello,
    "welcome": Welcome,
    "beat": Beat,
    "call": Call,
    "answer": Answer,
    "open": Open,
    "close": Close,
    "drain": Drain,
}
_ANY: TypeAdapter[FleetMessage] = TypeAdapter(
    Annotated[Hello | Welcome | Beat | Call | Answer | Open | Close | Drain, Field(discriminator="kind")]
)


class ProtocolError(Exception):
    """The other side sent what the protocol does not allow; the connection ends."""


def decode(text: str) -> FleetMessage:
    try:
        message: FleetMessage = _ANY.validate_json(text)
    except ValueError as error:
        said = " ".join(str(error).split())[:300]
        raise ProtocolError(f"not a fleet message: {said}") from None
    return message


def encode(message: FleetMessage) -> str:
    return message.model_dump_json(by_alias=True, exclude_none=True)


def frame(channel: int, data: bytes) -> bytes:
    return _HEADER.pack(channel) + data


def unframe(data: bytes) -> tuple[int, bytes]:
    if len(data) < _HEADER.size:
        raise ProtocolError("a binary frame shorter than its channel number")
    (channel,) = _HEADER.unpack_from(data)
    return channel, data[_HEADER.size :]
