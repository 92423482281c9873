"""The worker connection's messages: what is sent validates against the committed schemas
(infrax/schemas/fleet/v1/), and what breaks the protocol is refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from infrax.fleet.protocol import (
    Answer,
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

SCHEMAS = Path(__file__).resolve().parents[2] / "infrax" / "schemas" / "fleet" / "v1"
EXAMPLES: list[FleetMessage] = [
    Hello(name="rack-1.example", pool="hardware", capacity=8, agent_version="1", containers=["c-1"]),
    Welcome(worker_id="0" * 32, grace=10.0, orphans=["c-1"]),
    Call(id=7, method="create", params={"containerId": "c-2", "secret": "s"}),
    Answer(id=7, result={}),
    Answer(id=8, error="ProviderError: no room"),
    Open(channel=3, container_id="c-2"),
    Close(channel=3),
    Drain(),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: m.kind)
def test_every_message_validates_against_its_committed_schema_and_reads_back(message: FleetMessage) -> None:
    text = encode(message)
    schema = json.loads((SCHEMAS / f"{message.kind}.json").read_text())
    Draft202012Validator(schema).validate(json.loads(text))
    assert decode(text) == message


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('{"kind": "shell", "version": 1}', "does not match any of the expected tags"),
        ('{"kind": "open", "version": 1, "channel": 1, "containerId": "c", "port": 22}', "port"),
        ('{"kind": "open", "version": 1, "channel": -1, "containerId": "c"}', "channel"),
        ('{"kind": "open", "version": 1, "channel": 1, "containerId": "../etc"}', "containerId"),
        ('{"kind": "hello", "version": 2, "name": "w", "pool": "p", "capacity": 1, "agentVersion": "1"}', "version"),
        ("not json", "not a fleet message"),
    ],
)
def test_what_breaks_the_protocol_is_refused_saying_what(text: str, said: str) -> None:
    with pytest.raises(ProtocolError, match=said):
        decode(text)


def test_a_binary_frame_is_its_channel_then_its_bytes() -> None:
    assert unframe(frame(2**32 - 1, b"agent bytes")) == (2**32 - 1, b"agent bytes")
    with pytest.raises(ProtocolError, match="shorter than its channel number"):
        unframe(b"\x00\x01")
