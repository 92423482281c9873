"""How an agent gets its secret (never through its environment), a socket file instead of a port,
and a bootstrapper given inline: the pieces that let a container run with no network."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from infrax.agent.client import AgentClient, AgentError
from tests.agent.conftest import REPO_ROOT

SECRET = "a-secret-given-on-stdin-0123456789"


async def _agent(tmp_path: Path, *args: str, stdin: bytes | None) -> tuple[asyncio.subprocess.Process, dict]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infrax.agent",
        "--workdir",
        str(tmp_path / "work"),
        "--kill-grace",
        "0.3",
        *args,
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT)},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    if stdin is not None:
        process.stdin.write(stdin)
    process.stdin.close()
    line = (await asyncio.wait_for(process.stdout.readline(), 10)).decode()
    assert line.startswith("INFRAX-AGENT-READY "), line
    return process, json.loads(line.split(" ", 1)[1])


async def _stop(process: asyncio.subprocess.Process) -> None:
    process.terminate()
    await process.wait()


async def test_a_secret_on_stdin_is_the_secret_and_in_no_environment(tmp_path: Path) -> None:
    process, ready = await _agent(tmp_path, "--secret-stdin", stdin=SECRET.encode() + b"\n")
    try:
        assert (await AgentClient(ready["host"], ready["port"], SECRET).heartbeat())["busy"] is False
        try:
            await AgentClient(ready["host"], ready["port"], "another-secret").heartbeat()
            raise AssertionError("a wrong secret was let in")
        except AgentError as error:
            assert error.code == "unauthorized"
        assert SECRET.encode() not in Path(f"/proc/{process.pid}/environ").read_bytes()
        # Non-dumpable: another user cannot read its memory or environment (root can, outside a container).
        reading = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", f"/proc/{process.pid}/environ"],
            capture_output=True,
            text=True,
        )
        assert reading.returncode != 0 and "Permission denied" in reading.stderr
    finally:
        await _stop(process)


async def test_a_secret_file_is_removed_once_read(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET)
    process, ready = await _agent(tmp_path, "--secret-file", str(secret_file), stdin=None)
    try:
        assert not secret_file.exists()
        assert (await AgentClient(ready["host"], ready["port"], SECRET).heartbeat())["busy"] is False
    finally:
        await _stop(process)


async def test_an_agent_on_a_socket_file_runs_an_inline_bootstrapper(tmp_path: Path) -> None:
    socket_file = tmp_path / "agent.sock"
    process, ready = await _agent(tmp_path, "--secret-stdin", "--host", f"unix:{socket_file}", stdin=SECRET.encode())
    try:
        assert (ready["host"], ready["port"]) == (f"unix:{socket_file}", 0)
        assert socket_file.stat().st_mode & 0o777 == 0o600
        script = b'#!/bin/sh\necho inline "$@"\n'
        request = {
            "runId": "inline-0",
            "bootstrapper": "https://nowhere.invalid/never-fetched.sh",
            "bootstrapperContent": base64.b64encode(script).decode(),
            "bootstrapperArguments": ["ok"],
            "maxRunTime": 20,
        }
        output = []
        async with AgentClient(ready["host"], 0, SECRET).run(request) as stream:
            async for message in stream:
                if message["type"] == "output":
                    output.append(message["data"])
        assert stream.exit is not None and stream.exit["status"] == "completed", stream.exit
        assert "inline ok" in "".join(output)
    finally:
        await _stop(process)
