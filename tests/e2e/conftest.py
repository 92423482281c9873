"""A whole infrax in this process, served on loopback ports, reached over real HTTP."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from yarl import URL

from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import ContainerType, TaskRequest, is_final
from infrax.provisioner.providers.process import agent_pid as process_agent_pid
from infrax.stack import Stack
from tests.conftest import fresh_postgres_url


def make_config(data_dir: Path, **overrides: Any) -> Config:
    types = overrides.pop("container_types", None) or [
        ContainerType(name="linux_x86_64", tags=["linux_x86_64", "linux"], max_concurrent=3, idle_timeout=30)
    ]
    # A failed partition is final unless a test asks for re-runs of its failures (the default's 2).
    overrides.setdefault("rerun_failures", 0)
    # Task code as the test's own user, so bootstrappers in the test's (private) temporary folders
    # run; the tests of isolation name `run_as: container` (the default as root) themselves.
    overrides["providers"] = [
        ProviderConfig(p.name, p.kind, p.capacity, {"run_as": "self", **p.options}) if p.kind == "process" else p
        for p in overrides.get("providers") or [ProviderConfig("process")]
    ]
    return Config(
        data_dir=data_dir, ports={n: 0 for n in COMPONENTS}, container_types=types, agent_kill_grace=0.5, **overrides
    )


class Running:
    """A started stack and HTTP clients to each component over TCP."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.admin = {"Authorization": f"Bearer {stack.admin_token}"}
        self.http = {
            name: httpx.AsyncClient(base_url=url, timeout=30, headers=self.admin) for name, url in stack.urls.items()
        }

    def __getitem__(self, component: str) -> httpx.AsyncClient:
        return self.http[component]

    async def submit(self, tasks: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        response = await self["scheduler"].post("/api/v1/task-requests", json={"tasks": tasks, **fields})
        assert response.status_code == 201, response.text
        return response.json()

    async def request(self, request_id: str) -> TaskRequest:
        response = await self["scheduler"].get(f"/api/v1/task-requests/{request_id}")
        response.raise_for_status()
        return TaskRequest.model_validate(response.json())

    async def wait_request(
        self, request_id: str, timeout: float = 60, until: Callable[[TaskRequest], bool] | None = None
    ) -> TaskRequest:
        deadline = time.monotonic() + timeout
        until = until or (lambda r: is_final(r.state))
        while True:
            request = await self.request(request_id)
            if until(request):
                return request
            if time.monotonic() > deadline:
                raise AssertionError(f"request still {request.state} after {timeout}s: {request.model_dump_json()}")
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for client in self.http.values():
            await client.aclose()
        await self.stack.stop()


BACKENDS = ["embedded", "postgresql+rabbitmq"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The store and bus URLs: SQLite and the in-process bus, or PostgreSQL and RabbitMQ."""
    if request.param == "embedded":
        yield {}
        return
    amqp = URL(request.getfixturevalue("rabbitmq_url"))
    async for db in fresh_postgres_url():
        # Queues of its own, so no test sees another's leftovers on the session's vhost.
        yield {"db": db, "bus": str(amqp.update_query(queue_prefix=f"t{uuid.uuid4().hex[:8]}."))}


@pytest.fixture
async def start_stack(tmp_path: Path, backend: dict[str, str]) -> AsyncIterator[Callable[..., Any]]:
    started: list[Running] = []

    async def start(**overrides: Any) -> Running:
        data_dir = overrides.pop("data_dir", tmp_path / "data")
        stack = Stack(make_config(data_dir, **{**backend, **overrides}))
        await stack.start()
        running = Running(stack)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.close()


def script(tmp_path: Path, name: str, body: str) -> str:
    """A bootstrapper on disk (the agent accepts a path); returns its path."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def task(name: str, bootstrapper: str, files: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "files": files or ["a.py"],
        "containerTag": ["linux_x86_64"],
        "bootstrapper": [bootstrapper],
        "bootstrapperArguments": [],
        **fields,
    }


# -- `infrax up` as a real process -------------------------------------------------------


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_up(config: Path, log: Path, *options: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "infrax.cli", "up", "--config", str(config), *options],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


async def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            assert process.poll() is None, "infrax up exited"
            try:
                if (await client.get(f"{url}/api/v1/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def admin_token(data_dir: Path) -> dict[str, str]:
    """The Authorization header with the admin token `infrax up` left in its data directory."""
    return {"Authorization": f"Bearer {(data_dir / 'admin.token').read_text().strip()}"}


def write_up_config(tmp_path: Path, max_concurrent: int = 2) -> tuple[Path, dict[str, int]]:
    ports = dict(zip(COMPONENTS, free_ports(len(COMPONENTS)), strict=True))
    config = tmp_path / "infrax.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(tmp_path / "data"),
                "ports": ports,
                "agent_kill_grace": 0.5,
                "rerun_failures": 0,
                "providers": [{"name": "process", "options": {"run_as": "self"}}],
                "container_types": [
                    {"name": "linux_x86_64", "tags": ["linux_x86_64"], "max_concurrent": max_concurrent}
                ],
            }
        )
    )
    return config, ports


# -- processes of process containers, as the host sees them -------------------------------------
# Each agent of the process provider is PID 1 of a PID namespace of its own: the pids task code sees
# ($$, $!, $PPID) are that namespace's. A bootstrapper says where it runs ($INFRAX_WORK_DIR); these
# turn that and its pids into the host's.


def agent_pid(work_dir: str) -> int:
    """The host pid of the agent whose run directory is `work_dir`."""
    path = Path(work_dir)
    home = next(p.parent for p in [path, *path.parents] if p.name == "work")
    pid = process_agent_pid(home)
    if pid is None:
        raise LookupError(f"no agent runs in {home}")
    return pid


def host_pid(work_dir: str, pid: int) -> int:
    """The host pid of process `pid` as task code in `work_dir` saw it."""
    agent = agent_pid(work_dir)
    namespace = os.readlink(f"/proc/{agent}/ns/pid")
    if namespace == os.readlink("/proc/self/ns/pid"):
        return pid
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            line = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("NSpid:"))
        except (OSError, StopIteration):
            continue
        if int(line.split()[-1]) == pid:
            return int(entry.name)
    raise LookupError(f"no process {pid} in the namespace of the agent of {work_dir}")
