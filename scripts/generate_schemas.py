"""Write the JSON Schemas of the bus messages, of the REST wire models and of the worker
connection's messages; run it after changing them.

    python scripts/generate_schemas.py          # rewrite infrax/schemas/{bus,rest,fleet}/v1/
    python scripts/generate_schemas.py --check  # exit 1 and list the files that are stale

Bus messages: one file per kind (`infrax.bus.messages.BUS_MESSAGES`), as `infrax.bus.schemas`
checks them. REST: one file per `WireModel` of `infrax.model`, named after the class, in
validation mode (what a receiver accepts). tests/test_schemas.py fails when a file is stale.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from infrax import model
from infrax.bus.schemas import JSON_SCHEMA_DIALECT, SCHEMA_BASE, json_schemas
from infrax.executioner.test_results import TestHistory, TestResultView, TestVerdict
from infrax.fleet import protocol as fleet
from infrax.model import WIRE_VERSION, WireModel
from infrax.optimizer.container_starts import LearnedStart
from infrax.scheduler.summaries import RequestSummary

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "infrax" / "schemas"
GENERATED_DIRS = (f"bus/v{WIRE_VERSION}", f"rest/v{WIRE_VERSION}", f"fleet/v{fleet.VERSION}")


# REST bodies that live beside their component rather than in infrax.model.
COMPONENT_MODELS: dict[str, type[WireModel]] = {
    "RequestSummary": RequestSummary,
    "TestResult": TestResultView,
    "TestVerdict": TestVerdict,
    "TestHistory": TestHistory,
    "LearnedStart": LearnedStart,
}


def rest_models() -> dict[str, type[WireModel]]:
    shared = {
        name: value
        for name, value in vars(model).items()
        if isinstance(value, type)
        and issubclass(value, WireModel)
        and value is not WireModel
        and value.__module__ == model.__name__
    }
    return {**shared, **COMPONENT_MODELS}


def rest_schema(name: str, cls: type[WireModel]) -> dict[str, Any]:
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"{SCHEMA_BASE}/rest/v{WIRE_VERSION}/{name}.json",
        **cls.model_json_schema(by_alias=True),
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def generated() -> dict[str, str]:
    """Path under infrax/schemas -> the file's text."""
    files = {f"bus/v{WIRE_VERSION}/{kind}.json": render(schema) for kind, schema in json_schemas().items()}
    for name, cls in sorted(rest_models().items()):
        files[f"rest/v{WIRE_VERSION}/{name}.json"] = render(rest_schema(name, cls))
    for kind, message in sorted(fleet.FLEET_MESSAGES.items()):  # the worker connection's text frames
        files[f"fleet/v{fleet.VERSION}/{kind}.json"] = render(
            {
                "$schema": JSON_SCHEMA_DIALECT,
                "$id": f"{SCHEMA_BASE}/fleet/v{fleet.VERSION}/{kind}.json",
                **message.model_json_schema(by_alias=True),
            }
        )
    return files


def stale(root: Path = SCHEMA_DIR) -> list[str]:
    """Files that differ from freshly generated ones, are missing, or should not be there."""
    files = generated()
    present = {str(p.relative_to(root)) for d in GENERATED_DIRS for p in (root / d).glob("*.json")}
    differing = [
        path for path, text in files.items() if not (root / path).is_file() or (root / path).read_text() != text
    ]
    return sorted(set(differing) | (present - set(files)))


def write(root: Path = SCHEMA_DIR) -> list[str]:
    files = generated()
    changed = stale(root)
    for path in changed:
        target = root / path
        if path in files:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path])
        else:
            target.unlink()
    return changed


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        outdated = stale()
        for path in outdated:
            print(f"stale: infrax/schemas/{path}")
        return 1 if outdated else 0
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    for path in write():
        print(f"wrote infrax/schemas/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
