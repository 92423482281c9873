"""What each exchange carries, and the check every message passes on publish and on receipt.

A bus message is a JSON object with a `kind` and a `version`; `kind` names its pydantic model
in `infrax.bus.messages.BUS_MESSAGES`, and each exchange allows a fixed set of kinds. Both
bus implementations call `encode` before publishing (an invalid body is a programming error:
`InvalidMessage`, a `ValueError`) and `decode` on every delivery (an invalid message is
dead-lettered and the consumer goes on). The JSON Schemas in `infrax/schemas/bus/v1/` are
generated from the same models (`scripts/generate_schemas.py`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from infrax.bus import topics
from infrax.bus.messages import BUS_MESSAGES, BusMessage
from infrax.model import WIRE_VERSION

ANY_OBJECT = None
"""An exchange whose messages are checked elsewhere: any JSON object passes here."""

EXCHANGE_KINDS: Mapping[str, frozenset[str] | None] = {
    topics.RUNS: frozenset({"run-status"}),
    topics.PARTITIONS: frozenset({"partition-status"}),
    topics.TASKS: frozenset({"task-status"}),
    topics.REQUESTS: frozenset({"task-request-status"}),
    topics.CONTAINERS: frozenset({"container-event"}),
    topics.JOBS: frozenset({"job-status"}),
    # Treeherder's pulse job messages follow Treeherder's own schema (pulse-job.json), which
    # whoever builds them checks; the bus only insists on a JSON object.
    topics.TREEHERDER: ANY_OBJECT,
    # Taskcluster's queue messages: Taskcluster's schemas (task-*-message.yml), checked by the tests.
    **dict.fromkeys(topics.TC_EXCHANGES, ANY_OBJECT),
    # taskcluster-github's messages: its schemas (github-*-message.yml), checked by the tests.
    topics.GITHUB_PUSH: ANY_OBJECT,
    topics.GITHUB_PULL_REQUEST: ANY_OBJECT,
    # hg.mozilla.org's pushlog messages: checked by the tests against Treeherder's reading of them.
    topics.HG_PUSHES: ANY_OBJECT,
}

VERSIONS = frozenset({WIRE_VERSION})
SCHEMA_BASE = "https://infrax.dev/schemas"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class InvalidMessage(ValueError):
    """A body that its exchange does not carry, or that fails its kind's schema."""


def allowed_kinds(exchange: str) -> frozenset[str] | None:
    """The kinds `exchange` carries (`ANY_OBJECT` for any); `ValueError` for an unknown exchange."""
    try:
        return EXCHANGE_KINDS[exchange]
    except KeyError:
        raise ValueError(f"unknown exchange {exchange!r}: every exchange is named in infrax.bus.topics") from None


def encode(exchange: str, body: Mapping[str, Any]) -> bytes:
    """Check `body` for `exchange` and return its JSON encoding, as published."""
    try:
        data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    except (TypeError, ValueError) as e:
        raise InvalidMessage(f"body for {exchange} is not JSON: {e}") from None
    _check(exchange, body, data)
    return data


def encode_message(exchange: str, message: BusMessage) -> bytes:
    """A message built as its model, so checked when it was built: its JSON, once the exchange is
    known to carry its kind. `encode` would check a plain body by parsing it again, which is most
    of the cost of a thousand messages written in one transaction (a cancel, a plan)."""
    kinds = allowed_kinds(exchange)
    kind = getattr(message, "kind", None)
    if kinds is not ANY_OBJECT and kind not in (kinds or ()):
        raise InvalidMessage(f"{exchange} carries kinds {sorted(kinds or ())}, not {kind!r}")
    return message.model_dump_json(by_alias=True).encode()


def decode(exchange: str, data: bytes) -> dict[str, Any]:
    """Parse and check a received message; `InvalidMessage` says why it is refused.

    Forward-compatible: fields this release does not know (a newer release's optional additions)
    are dropped from the body, not a reason to refuse it. Publishing stays strict (`encode`)."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise InvalidMessage(f"not JSON: {e}") from None
    _check(exchange, body, data, tolerant=True)
    return body  # type: ignore[no-any-return,unused-ignore]  # _check made sure it is an object


def _check(exchange: str, body: Any, data: bytes, tolerant: bool = False) -> None:
    kinds = allowed_kinds(exchange)
    if not isinstance(body, Mapping):
        raise InvalidMessage(f"a message on {exchange} is a JSON object, not {type(body).__name__}")
    if kinds is ANY_OBJECT:
        return
    kind = body.get("kind")
    if kind not in kinds:
        raise InvalidMessage(f"{exchange} carries kinds {sorted(kinds)}, not {kind!r}")
    if body.get("version") not in VERSIONS:
        raise InvalidMessage(f"{kind} version {body.get('version')!r} is not one of {sorted(VERSIONS)}")
    try:
        # Strict JSON-mode validation by alias only, so exactly what the JSON Schema accepts passes.
        BUS_MESSAGES[kind].model_validate_json(data, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        unknown = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
        if tolerant and unknown and len(unknown) == e.error_count():
            for loc in unknown:
                _drop(body, loc)
            _check(exchange, body, json.dumps(body).encode(), tolerant=False)
            return
        errors = "; ".join(f"{'.'.join(map(str, err['loc'])) or '<root>'}: {err['msg']}" for err in e.errors()[:5])
        raise InvalidMessage(f"invalid {kind}: {errors}") from None


def _drop(body: Any, loc: tuple[Any, ...]) -> None:
    for step in loc[:-1]:
        body = body[step]
    body.pop(loc[-1], None)


def json_schema(kind: str) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one message kind, as in `infrax/schemas/bus/v1/`."""
    schema = BUS_MESSAGES[kind].model_json_schema(by_alias=True)
    # `kind` and `version` have defaults in Python, but on the wire they are the envelope.
    envelope = ["kind", "version"]
    schema["required"] = envelope + [f for f in schema.get("required", []) if f not in envelope]
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE}/bus/v{WIRE_VERSION}/{kind}.json",
        **schema,
    }


def json_schemas() -> dict[str, dict[str, Any]]:
    """Every bus message kind's JSON Schema, by kind."""
    return {kind: json_schema(kind) for kind in sorted(BUS_MESSAGES)}
