"""A whole infrax in this process (no sockets) for the provisioner's and the container tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from infrax.bus import Message, topics
from infrax.bus.messages import RunStatus
from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import ContainerType, TaskDefinition, TaskPartition, TaskRequest, TaskRequestSubmission, is_final
from infrax.provisioner.service import Provisioner
from infrax.scheduler.client import SchedulerClient
from infrax.stack import Stack


class StackRun:
    """A started stack, its scheduler client, and every run status published."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.scheduler = SchedulerClient(stack.client("scheduler", token=stack.admin_token))
        self.runs: list[RunStatus] = []
        self.on_run: Callable[[RunStatus], Any] | None = None

    @property
    def provisioner(self) -> Provisioner:
        return self.stack.services["provisioner"]  # type: ignore[no-any-return]

    async def listen(self) -> None:
        async def record(message: Message) -> None:
            status = RunStatus.model_validate(message.body)
            self.runs.append(status)
            if self.on_run is not None:
                await self.on_run(status)

        assert self.stack.bus is not None
        await self.stack.bus.subscribe("test-runs", topics.RUNS, ["#"], record)

    async def submit(self, *tasks: TaskDefinition) -> TaskRequest:
        return await self.scheduler.submit(TaskRequestSubmission(project="test", tasks=list(tasks)))

    async def partitions(self, request_id: str) -> list[TaskPartition]:
        return await self.scheduler.partitions(request_id)

    async def wait_partitions(
        self,
        request_id: str,
        until: Callable[[list[TaskPartition]], Any],
        timeout: float = 60,
        what: str = "partitions",
    ) -> list[TaskPartition]:
        deadline = time.monotonic() + timeout
        while True:
            parts = await self.partitions(request_id)
            if parts and until(parts):
                return parts
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: not reached within {timeout}s: "
                    + "; ".join(f"{p.index} {p.state} run {p.run} {p.message}" for p in parts)
                )
            await asyncio.sleep(0.05)

    async def wait_request(self, request_id: str, timeout: float = 60) -> TaskRequest:
        deadline = time.monotonic() + timeout
        while True:
            request = await self.scheduler.get_request(request_id)
            if is_final(request.state):
                return request
            if time.monotonic() > deadline:
                raise AssertionError(f"request still {request.state} after {timeout}s: {request.model_dump_json()}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_stack(
    data_dir: Path, container_types: list[ContainerType], providers: list[ProviderConfig] | None = None, **config: Any
) -> AsyncIterator[StackRun]:
    config.setdefault("rerun_failures", 0)  # a failed partition is final unless a test says otherwise
    settings = Config(
        data_dir=data_dir,
        ports={n: 0 for n in COMPONENTS},
        container_types=container_types,
        providers=providers or [ProviderConfig("process", options={"run_as": "self"})],
        agent_kill_grace=0.5,
        **config,
    )
    # No job master: these tests submit task requests to the scheduler themselves.
    stack = Stack(settings, components=("optimizer", "scheduler", "provisioner", "executioner"), serve=False)
    await stack.start()
    run = StackRun(stack)
    try:
        await run.listen()
        yield run
    finally:
        await stack.stop()


def bootstrapper(folder: Path, name: str, body: str) -> str:
    """A shell bootstrapper on disk (the agent takes a path); returns the path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def task(name: str, script: str, **fields: Any) -> TaskDefinition:
    return TaskDefinition(
        name=name,
        files=fields.pop("files", ["a.py"]),
        container_tag=fields.pop("tag", ["linux"]),
        bootstrapper=script,
        **fields,
    )
