"""An executioner on a real store and real agent processes, with a provisioner and a bus that record.

`start_agent` is the agent tests' fixture: `python -m infrax.agent` subprocesses on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from infrax.bus import Message, topics
from infrax.bus.memory import MemoryBus
from infrax.bus.messages import RunStatus
from infrax.executioner.service import Executioner
from infrax.model import ContainerAccess, ExecutionAssignment, Release
from infrax.provisioner.client import ProvisionerClient
from infrax.store import Database
from tests.agent.conftest import SECRET, AgentProcess, start_agent
from tests.provisioner.conftest import make_offer

__all__ = ["start_agent"]


class RecordingProvisioner(ProvisionerClient):
    def __init__(self) -> None:
        super().__init__(httpx.AsyncClient(base_url="http://provisioner.invalid"))
        self.releases: list[Release] = []
        self.containers: dict[str, ContainerAccess] = {}  # run id -> where it runs, for a restarted executioner

    async def release_many(self, releases: list[Release]) -> None:
        self.releases += releases

    async def access(self, run_ids: list[str]) -> list[ContainerAccess]:
        return [self.containers[r] for r in run_ids if r in self.containers]


class Made:
    def __init__(self, db: Database, bus: MemoryBus, provisioner: RecordingProvisioner, log_dir: Path) -> None:
        self.db, self.bus, self.provisioner, self.log_dir = db, bus, provisioner, log_dir
        self.statuses: list[RunStatus] = []
        self.started: list[Executioner] = []
        self._changed = asyncio.Event()

    async def listen(self) -> None:
        async def record(message: Message) -> None:
            self.statuses.append(RunStatus.model_validate(message.body))
            self._changed.set()

        await self.bus.subscribe("test-runs", topics.RUNS, ["#"], record)

    async def executioner(self, name: str = "executioner") -> Executioner:
        """A started executioner; another one on the same store is that executioner after a restart."""
        executioner = Executioner(self.db, self.bus, self.provisioner, self.log_dir, "http://executioner.test", name)
        await executioner.start()
        self.started.append(executioner)
        return executioner

    def of(self, run_id: str) -> list[str]:
        return [s.state for s in self.statuses if s.run_id == run_id]

    async def final(self, run_id: str, timeout: float = 20) -> RunStatus:
        """The run's end as published, once every executioner is done with the run."""
        async with asyncio.timeout(timeout):
            for executioner in self.started:
                await executioner.finished(run_id)
            while True:
                done = [s for s in self.statuses if s.run_id == run_id and s.state != "running"]
                if done:
                    return done[0]
                self._changed.clear()
                await self._changed.wait()


def assignment(
    agent: AgentProcess,
    bootstrapper: Path | str,
    *args: str,
    files: list[str] | None = None,
    run: int = 0,
    partition_id: str | None = None,
) -> ExecutionAssignment:
    offer = make_offer(
        run=run,
        partition_id=partition_id,
        index=1,
        files=files or [],
        bootstrapper=str(bootstrapper),
        bootstrapper_arguments=list(args),
    )
    return ExecutionAssignment(offer=offer, container_id="c-1", host=agent.host, port=agent.port, secret=SECRET)


@pytest.fixture
async def made(database: Database, tmp_path: Path) -> AsyncIterator[Made]:
    await database.create_schema()
    bus = MemoryBus()
    await bus.start()
    provisioner = RecordingProvisioner()
    result = Made(database, bus, provisioner, tmp_path / "logs")
    await result.listen()
    try:
        yield result
    finally:
        for executioner in result.started:
            await executioner.stop()
        await bus.close()
        await provisioner.http.aclose()


def journal_script(tmp_path: Path, body: str = "") -> tuple[Path, Path]:
    """A bootstrapper that writes a line to a journal for each start; returns (script, journal)."""
    journal = tmp_path / "journal"
    script = tmp_path / "journaled.sh"
    script.write_text(f'#!/bin/sh\necho "start $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n{body}')
    script.chmod(0o755)
    return script, journal


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []
