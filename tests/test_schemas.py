"""The committed JSON Schemas (bus and REST) are the generated ones, and agree with the bus's own check."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from infrax.bus import schemas, topics
from infrax.bus.messages import (
    BUS_MESSAGES,
    ContainerEvent,
    JobStatus,
    PartitionStatus,
    RequestStatus,
    RunStatus,
    TaskStatus,
)
from infrax.model import State, TaskPartition

REPO_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_DIR = REPO_ROOT / "infrax" / "schemas"


def load_script() -> ModuleType:
    path = REPO_ROOT / "scripts" / "generate_schemas.py"
    spec = importlib.util.spec_from_file_location("generate_schemas", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_schemas_are_the_generated_ones() -> None:
    assert load_script().stale() == [], "run `python scripts/generate_schemas.py` and commit the result"


@pytest.mark.parametrize("area", ["bus", "rest"])
def test_schemas_are_valid_draft_2020_12(area: str) -> None:
    files = sorted((SCHEMA_DIR / area / "v1").glob("*.json"))
    assert files
    for path in files:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"https://infrax.dev/schemas/{area}/v1/{path.name}"


def test_every_exchange_says_what_it_carries_and_every_kind_has_an_exchange() -> None:
    assert set(schemas.EXCHANGE_KINDS) == set(topics.ALL_EXCHANGES)
    carried = set().union(*(kinds for kinds in schemas.EXCHANGE_KINDS.values() if kinds is not None))
    assert carried == set(BUS_MESSAGES)
    assert schemas.EXCHANGE_KINDS[topics.TREEHERDER] is schemas.ANY_OBJECT


PARTITION = TaskPartition(
    id="p",
    task_id="t",
    request_id="r",
    job_id="j",
    index=1,
    count=2,
    files=["a.py"],
    container_type="linux",
    state=State.QUEUED,
    run=0,
    priority=0,
)
EXAMPLES: dict[str, tuple[str, dict[str, Any]]] = {
    "run-status": (
        topics.RUNS,
        RunStatus(
            run_id="p-0",
            partition_id="p",
            task_id="t",
            request_id="r",
            job_id=None,
            run=0,
            container_type="linux",
            state="completed",
            exit_code=0,
            duration=1.5,
            file_durations={"a.py": 1},
        ).wire(),
    ),
    "partition-status": (
        topics.PARTITIONS,
        PartitionStatus(
            previous_state=None, task_name="lint", project="demo", revision="abc", partition=PARTITION
        ).wire(),
    ),
    "task-status": (
        topics.TASKS,
        TaskStatus(
            task_id="t", request_id="r", job_id="j", name="lint", state=State.RUNNING, previous_state=State.QUEUED
        ).wire(),
    ),
    "task-request-status": (
        topics.REQUESTS,
        RequestStatus(request_id="r", job_id=None, state=State.COMPLETED, previous_state=State.RUNNING).wire(),
    ),
    "container-event": (topics.CONTAINERS, ContainerEvent(event="lost", container_type="linux").wire()),
    "job-status": (
        topics.JOBS,
        JobStatus(job_id="j", project="demo", revision="abc", state=State.PENDING, previous_state=None).wire(),
    ),
}


def camel_to_snake(name: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def variants(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The example and ways of breaking it, each of which both checks must refuse."""
    first_required = next(k for k in body if k not in ("kind", "version", "timestamp"))
    camel = next(k for k in body if camel_to_snake(k) != k)
    return {
        "valid": body,
        "no-kind": {k: v for k, v in body.items() if k != "kind"},
        "no-version": {k: v for k, v in body.items() if k != "version"},
        "version-2": {**body, "version": 2},
        "extra-field": {**body, "surprise": True},
        "missing-field": {k: v for k, v in body.items() if k != first_required},
        "snake-case": {(camel_to_snake(k) if k == camel else k): v for k, v in body.items()},
        "wrong-type": {**body, first_required: 12 if isinstance(body[first_required], str) else "x"},
    }


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_json_schema_and_the_bus_check_agree(kind: str) -> None:
    exchange, example = EXAMPLES[kind]
    validator = Draft202012Validator(schemas.json_schema(kind))
    for label, body in variants(example).items():
        schema_ok = validator.is_valid(body)
        try:
            schemas.encode(exchange, body)  # publishing is strict: exactly what the schema says
            check_ok = True
        except schemas.InvalidMessage:
            check_ok = False
        assert schema_ok == check_ok == (label == "valid"), label
        # Receipt is forward-compatible: a field it does not know is no reason to refuse a message.
        try:
            received = schemas.decode(exchange, json.dumps(body).encode())
        except schemas.InvalidMessage:
            assert label not in ("valid", "extra-field"), label
        else:
            # A renamed optional field is an unknown one too: dropped, the message otherwise valid.
            assert label in ("valid", "extra-field", "snake-case"), label
            assert set(received) <= set(body) and "surprise" not in received


def test_the_bus_check_refuses_a_kind_its_exchange_does_not_carry() -> None:
    exchange, body = EXAMPLES["job-status"]
    schemas.encode(exchange, body)
    with pytest.raises(schemas.InvalidMessage, match="carries kinds"):
        schemas.encode(topics.RUNS, body)
    with pytest.raises(ValueError, match="unknown exchange"):
        schemas.encode("exchange/infrax/v1/nowhere", body)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_a_message_model_is_encoded_as_its_checked_body_is(kind: str) -> None:
    """The outbox writes a model without parsing it again: the same bytes the strict check passes."""
    exchange, body = EXAMPLES[kind]
    model = BUS_MESSAGES[kind].model_validate(body)
    encoded = schemas.encode_message(exchange, model)
    assert json.loads(encoded) == json.loads(schemas.encode(exchange, body))
    assert schemas.decode(exchange, encoded) == json.loads(encoded)
    wrong = topics.JOBS if exchange != topics.JOBS else topics.RUNS
    with pytest.raises(schemas.InvalidMessage, match="carries kinds"):
        schemas.encode_message(wrong, model)
