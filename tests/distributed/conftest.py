"""Each component as its own OS process, over PostgreSQL and RabbitMQ."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from yarl import URL

from infrax.model import is_final
from tests.conftest import fresh_postgres_url
from tests.e2e.conftest import free_ports, wait_healthy


class Cluster:
    """Writes one config per process and starts, kills and restarts component processes."""

    def __init__(
        self,
        root: Path,
        db: str,
        bus: str,
        max_concurrent: int = 4,
        executioners: int = 1,
        schedulers: int = 1,
        **settings: Any,
    ) -> None:
        self.root = root
        self.names = (
            ["jobmaster", "optimizer", "provisioner"]
            + [f"scheduler-{i}" for i in range(1, schedulers + 1)]
            + [f"executioner-{i}" for i in range(1, executioners + 1)]
        )
        self.ports = dict(zip(self.names, free_ports(len(self.names)), strict=True))
        self.base = {
            "data_dir": str(root / "data"),
            "db": db,
            "bus": bus,
            "agent_kill_grace": 0.5,
            "rerun_failures": 0,  # a failed partition is final: the journals count each run
            # bootstrappers and journals in the test's private folder: task code as the test's user
            "providers": [{"name": "process", "options": {"run_as": "self"}}],
            "dispatch_timeout": 10.0,
            "in_flight_check_interval": 2.0,
            "urls": {
                "jobmaster": self.url("jobmaster"),
                "optimizer": self.url("optimizer"),
                "provisioner": self.url("provisioner"),
                "scheduler": self.url("scheduler-1"),
                "executioner": self.url("executioner-1"),
            },
            "executioners": [self.url(n) for n in self.names if n.startswith("executioner")],
            "container_types": [{"name": "linux_x86_64", "tags": ["linux_x86_64"], "max_concurrent": max_concurrent}],
            **settings,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def client(self, name: str, timeout: float = 30) -> httpx.AsyncClient:
        """A client of one process, with the admin token the first component to start left in data_dir."""
        token = (Path(self.base["data_dir"]) / "admin.token").read_text().strip()
        return httpx.AsyncClient(base_url=self.url(name), timeout=timeout, headers={"Authorization": f"Bearer {token}"})

    def _config(self, name: str) -> Path:
        component = name.split("-")[0]
        config = {**self.base, "ports": {component: self.ports[name]}, "name": name}
        config["urls"] = {k: v for k, v in self.base["urls"].items() if k != component}
        path = self.root / f"{name}.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start(self, name: str) -> None:
        component = name.split("-")[0]
        log = (self.root / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "infrax.cli", component, "--config", str(self._config(name)), "--name", name],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def start_all(self) -> None:
        for name in self.names:
            self.start(name)
        await asyncio.gather(*(self.wait_healthy(name) for name in self.names))

    async def wait_healthy(self, name: str, timeout: float = 60) -> None:
        try:
            await wait_healthy(self.url(name), self.processes[name], timeout)
        except AssertionError as error:
            raise AssertionError(f"{name}: {error}\n{self.log(name)}") from None

    def kill(self, name: str) -> None:
        """kill -9 of the component's process alone: its containers' agents, in sessions of their
        own, go on (as they would on another machine)."""
        os.kill(self.processes[name].pid, signal.SIGKILL)
        self.processes[name].wait()

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
async def cluster_backends(rabbitmq_url: str) -> AsyncIterator[dict[str, str]]:
    async for db in fresh_postgres_url():
        yield {"db": db, "bus": str(URL(rabbitmq_url).update_query(queue_prefix=f"c{uuid.uuid4().hex[:8]}."))}


@pytest.fixture
async def make_cluster(tmp_path: Path, cluster_backends: dict[str, str]) -> AsyncIterator[Any]:
    made: list[Cluster] = []

    async def make(**options: Any) -> Cluster:
        cluster = Cluster(tmp_path, cluster_backends["db"], cluster_backends["bus"], **options)
        made.append(cluster)
        await cluster.start_all()
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


async def wait_final(client: httpx.AsyncClient, path: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(path)).json()
        if is_final(body["state"]):
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {body['state']} after {timeout}s")
        await asyncio.sleep(0.2)


async def in_flight_by_executioner(db: str) -> dict[str, int]:
    """How many runs in flight each executioner holds, as the store says."""
    connection = await asyncpg.connect(db)
    try:
        rows = await connection.fetch(
            "SELECT executioner, count(*) AS n FROM executioner_runs"
            " WHERE state IN ('accepted', 'running') GROUP BY executioner"
        )
    finally:
        await connection.close()
    return {row["executioner"]: row["n"] for row in rows}
