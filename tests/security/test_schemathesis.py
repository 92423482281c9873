"""Schemathesis over every component's OpenAPI, authenticated, against `infrax up` as a real process:
no server error and no answer that breaks the component's own schema, whatever the input."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from infrax.config import CORE_COMPONENTS as COMPONENTS
from tests.e2e.conftest import start_up, wait_healthy, write_up_config

ST = Path(sys.executable).with_name("st")


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    tmp_path = tmp_path_factory.mktemp("schemathesis")
    config, ports = write_up_config(tmp_path)
    process = start_up(config, tmp_path / "up.log")
    try:
        for port in ports.values():
            asyncio.run(wait_healthy(f"http://127.0.0.1:{port}", process))
        yield ports, (tmp_path / "data" / "admin.token").read_text().strip(), tmp_path / "up.log"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.parametrize("component", COMPONENTS)
def test_no_input_makes_a_server_error_or_an_answer_against_the_schema(running, component: str) -> None:  # type: ignore[no-untyped-def]
    ports, token, log = running
    seen = len(log.read_text())  # the server log is the module's: this component's part starts here
    result = subprocess.run(
        [
            str(ST),
            "run",
            f"http://127.0.0.1:{ports[component]}/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance",
            "--max-examples",
            "10",
            "--seed",
            "7310",
            # The same cases every run (deterministic mode keeps no example database to replay).
            "--generation-deterministic",
            "-H",
            f"Authorization: Bearer {token}",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=log.parent,  # its caches go there, not into the checkout
    )
    summary = [line for line in result.stdout.splitlines() if "generated" in line or "unique failure" in line]
    print(component, *summary)  # the figures: cases generated, failures found
    ours = log.read_text()[seen:]
    assert result.returncode == 0, result.stdout[-6000:] + "\n--- server log ---\n" + ours[-3000:]
    assert "Traceback" not in ours
