"""What every `infrax` command shares: its consoles, exit codes, configuration and clients.

Exit codes (docs/cli.md): 0 done; 1 an error (bad input refused, infrax unreachable, a bad
configuration); 2 a usage error (unknown option, missing argument); 3 the job ended without
passing; 4 no such job, partition or revision, or an id prefix that names more than one.
Errors go to stderr, results to stdout.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
import typer
from rich.console import Console

from infrax.config import Config, ConfigError, load_config
from infrax.console import Clients
from infrax.executioner.client import ExecutionerClient
from infrax.http import ServiceError, tcp_client
from infrax.jobmaster.client import JobMasterClient
from infrax.scheduler.client import SchedulerClient
from infrax.store import StoreError

T = TypeVar("T")

OK, ERROR, USAGE, JOB_DID_NOT_PASS, NOT_FOUND = 0, 1, 2, 3, 4

# Piped output (CI logs, `make demo | tee`) still gets tables wide enough to read.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (or INFRAX_CONFIG)")
DbOption = typer.Option(None, "--db", help="database URL: sqlite:///path or postgresql://… (or INFRAX_DB)")
BusOption = typer.Option(None, "--bus", help="bus URL: memory:// or amqp://… (or INFRAX_BUS)")
DataDirOption = typer.Option(None, "--data-dir", help="where logs, containers and the SQLite file live")
JsonOption = typer.Option(False, "--json", help="print JSON (the REST API's bodies) instead of a table")


class NotFound(Exception):
    """No such thing, or an id prefix that names several: exit code 4."""


def open_files_as_allowed() -> None:
    """A server holds a socket per worker, agent and client: its soft limit of open files (1,024
    on many systems, a few hundred workers) is raised to the hard limit, as Go's runtime does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_event_loop(main: Awaitable[T]) -> T:
    """uvloop when installed: every component spends much of its time in the event loop itself."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def fail(message: str, code: int = ERROR) -> NoReturn:
    # One line, however long: what scripts and logs grep for is not split at the console's width.
    errors.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def load(config: Path | None = None, **overrides: Any) -> Config:
    try:
        return load_config(config, **overrides)
    except ConfigError as error:
        fail(str(error))


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn every expected failure into one clear line on stderr, not a traceback."""
    try:
        return run_event_loop(work())
    except NotFound as error:
        fail(str(error), NOT_FOUND)
    except ServiceError as error:
        fail(str(error), NOT_FOUND if error.status == 404 else ERROR)
    except (TimeoutError, ConfigError, ValueError, OSError, StoreError) as error:
        fail(str(error) or type(error).__name__)


def print_json(value: Any) -> None:
    """Bodies as the REST API gives them (camelCase), one JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")


def token(config: Config) -> str | None:
    """What the CLI authenticates with: INFRAX_TOKEN, the config's `token`, or the admin token that
    `infrax up` keeps in its data directory."""
    found = os.environ.get("INFRAX_TOKEN") or config.token
    if found:
        return found.strip()
    try:
        return (config.data_dir / "admin.token").read_text().strip() or None
    except OSError:
        return None


def clients(config: Config) -> Clients:
    held = token(config)
    headers = {"Authorization": f"Bearer {held}"} if held else {}

    def client(component: str) -> httpx.AsyncClient:
        made = tcp_client(config.url(component))
        made.headers.update(headers)
        return made

    return Clients(
        JobMasterClient(client("jobmaster")),
        SchedulerClient(client("scheduler")),
        ExecutionerClient(client("executioner")),
    )
