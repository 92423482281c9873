"""`make demo`: a passing push, then a push that breaks one test, through every component."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console

from infrax.config import COMPONENTS, Config
from infrax.console import Clients, show_failures, watch_job
from infrax.executioner.client import ExecutionerClient
from infrax.jobmaster.client import JobMasterClient
from infrax.model import PushSubmission
from infrax.private import passable_temp_dir
from infrax.sample_project import break_one_test, make_sample_repo
from infrax.scheduler.client import SchedulerClient
from infrax.stack import Stack


async def run_demo(console: Console, keep: bool = False) -> int:
    """Returns the exit code: 0 when the first push passed and the second failed, as they should."""
    root = passable_temp_dir("infrax-demo-")  # the containers' task users reach their folders below it
    repo = root / "sample"
    good = make_sample_repo(repo, build=True)
    console.print(f"[bold]sample project[/] with 6 test files, built once and tested in 3 partitions: {repo}")
    config = Config(data_dir=root / "data", ports={name: 0 for name in COMPONENTS})
    stack = Stack(config)
    await stack.start()
    clients = Clients(
        JobMasterClient(stack.client("jobmaster", token=stack.admin_token)),
        SchedulerClient(stack.client("scheduler", token=stack.admin_token)),
        ExecutionerClient(stack.client("executioner", token=stack.admin_token)),
    )
    try:
        console.rule("[bold]push 1: all tests pass")
        first = await _push_and_watch(clients, console, repo, good)
        bad = break_one_test(repo)
        console.rule("[bold]push 2: breaks tests/test_2.py")
        second = await _push_and_watch(clients, console, repo, bad)
    finally:
        await stack.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    ok = first == "completed" and second == "failed"
    verdict = "[bold green]as expected" if ok else "[bold red]NOT as expected"
    console.print(f"{verdict}[/]: first push {first}, second push {second}" + (f"; kept in {root}" if keep else ""))
    return 0 if ok else 1


async def _push_and_watch(clients: Clients, console: Console, repo: Path, revision: str) -> str:
    job = await clients.jobmaster.push(PushSubmission(repository=str(repo), revision=revision))
    job, request = await watch_job(clients, job.id, console, timeout=300)
    if request is not None:
        await show_failures(clients, request, console)
    return job.state
