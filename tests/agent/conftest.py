"""Fixtures for the agent tests: real agent subprocesses, bootstrapper scripts, schema validation."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infrax.agent.client import AgentClient

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = REPO_ROOT / "infrax" / "schemas" / "agent" / "v1"
SECRET = "test-secret-0123456789"


@dataclass
class AgentProcess:
    """A running agent subprocess."""

    process: asyncio.subprocess.Process
    host: str
    port: int
    workdir: Path
    log_path: Path
    expect_clean_exit: bool = True
    extra_pgids: list[int] = field(default_factory=list)

    def client(self, secret: str = SECRET, **kwargs: Any) -> AgentClient:
        return AgentClient(self.host, self.port, secret, **kwargs)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


StartAgent = Callable[..., Awaitable[AgentProcess]]


@pytest.fixture
async def start_agent(tmp_path: Path) -> AsyncIterator[StartAgent]:
    """Factory that starts ``python -m infrax.agent`` and waits for its READY line."""
    agents: list[AgentProcess] = []

    async def start(*extra_args: str, kill_grace: float = 0.3, env: dict[str, str] | None = None) -> AgentProcess:
        index = len(agents)
        workdir = tmp_path / f"agent{index}"
        log_path = tmp_path / f"agent{index}.log"
        environment = {**os.environ, "INFRAX_AGENT_SECRET": SECRET, "PYTHONPATH": str(REPO_ROOT)}
        environment.update(env or {})
        with log_path.open("wb") as log_file:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "infrax.agent",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--workdir",
                str(workdir),
                "--kill-grace",
                str(kill_grace),
                *extra_args,
                cwd=REPO_ROOT,
                env=environment,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
            )
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 10)
        prefix = "INFRAX-AGENT-READY "
        text = line.decode()
        assert text.startswith(prefix), f"unexpected first line {text!r}; log: {log_path.read_text()}"
        ready = json.loads(text[len(prefix) :])
        assert ready["protocol"] == 1
        agent = AgentProcess(process, ready["host"], ready["port"], workdir, log_path)
        agents.append(agent)
        return agent

    yield start

    for agent in agents:
        if agent.process.returncode is None:
            agent.process.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(agent.process.wait(), 5)
            except TimeoutError:
                agent.process.kill()
                await agent.process.wait()
                raise AssertionError(f"agent did not exit on SIGTERM; log:\n{agent.log()}") from None
            if agent.expect_clean_exit:
                assert code == 0, f"agent exited with {code} on SIGTERM; log:\n{agent.log()}"
        for pgid in agent.extra_pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
async def agent(start_agent: StartAgent) -> AgentProcess:
    """One agent with a short kill grace period."""
    return await start_agent()


@pytest.fixture
def script(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write an executable bootstrapper script; returns its absolute path."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()

    def write(name: str, body: str) -> Path:
        path = scripts / name
        path.write_text(body)
        path.chmod(0o755)
        return path

    return write


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A tiny HTTP server on 127.0.0.1 serving a directory; yields (directory, base URL)."""
    root = tmp_path / "http"
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _load_validators() -> dict[str, Any]:
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    schemas = {path.stem: json.loads(path.read_text()) for path in SCHEMA_DIR.glob("*.json")}
    registry: Registry[Any] = Registry().with_resources(
        (schema["$id"], Resource.from_contents(schema)) for schema in schemas.values()
    )
    return {name: Draft202012Validator(schema, registry=registry) for name, schema in schemas.items()}


@pytest.fixture(scope="session")
def validators() -> dict[str, Any]:
    """Draft 2020-12 validators for every schema file, keyed by file stem."""
    return _load_validators()


@pytest.fixture
def check(validators: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Validate a message the agent sent against its schema (and the agent-message union)."""

    def validate(message: dict[str, Any]) -> dict[str, Any]:
        name = message["type"]
        if name in ("heartbeat", "source-state"):
            name = f"{name}-response"
        validators[name].validate(message)
        validators["agent-message"].validate(message)
        return message

    return validate
