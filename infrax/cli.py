"""The `infrax` command."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import typer
from rich.console import Console
from rich.table import Table

from infrax.config import COMPONENTS, Config, ConfigError, load_config
from infrax.console import Clients, job_table, show_failures, styled, watch_job
from infrax.executioner.client import ExecutionerClient
from infrax.http import ServiceError, tcp_client
from infrax.jobmaster.client import JobMasterClient
from infrax.model import PushSubmission, run_id_of
from infrax.scheduler.client import SchedulerClient
from infrax.store import StoreError

app = typer.Typer(
    help="infrax: continuous-integration task execution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Piped output (CI logs, `make demo | tee`) still gets tables wide enough to read.
console = Console(width=None if sys.stdout.isatty() else 160)
T = TypeVar("T")
log = logging.getLogger("infrax")

ConfigOption = typer.Option(None, "--config", "-c", help="YAML config file (or INFRAX_CONFIG)")
DbOption = typer.Option(None, "--db", help="database URL: sqlite:///path or postgresql://… (or INFRAX_DB)")
BusOption = typer.Option(None, "--bus", help="bus URL: memory:// or amqp://… (or INFRAX_BUS)")
DataDirOption = typer.Option(None, "--data-dir", help="where logs, containers and the SQLite file live")


def run_event_loop(main: Awaitable[T]) -> T:
    """uvloop when installed: every component spends much of its time in the event loop itself."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)  # type: ignore[arg-type]
    return uvloop.run(main)  # type: ignore[arg-type]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _config(config: Path | None = None, **overrides: Any) -> Config:
    try:
        return load_config(config, **overrides)
    except ConfigError as error:
        _fail(str(error))
        raise AssertionError from None


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn every expected failure into one clear line instead of a traceback."""
    try:
        return run_event_loop(work())
    except ServiceError as error:
        _fail(str(error))
    except (TimeoutError, ConfigError, ValueError, OSError, StoreError) as error:
        _fail(str(error) or type(error).__name__)
    raise AssertionError("unreachable")


def _token(config: Config) -> str | None:
    """What the CLI authenticates with: INFRAX_TOKEN, the config's `token`, or the admin token that
    `infrax up` keeps in its data directory."""
    token = os.environ.get("INFRAX_TOKEN") or config.token
    if token:
        return token.strip()
    try:
        return (config.data_dir / "admin.token").read_text().strip() or None
    except OSError:
        return None


def _clients(config: Config) -> Clients:
    token = _token(config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def client(component: str) -> httpx.AsyncClient:
        made = tcp_client(config.url(component))
        made.headers.update(headers)
        return made

    return Clients(
        JobMasterClient(client("jobmaster")),
        SchedulerClient(client("scheduler")),
        ExecutionerClient(client("executioner")),
    )


# -- servers ------------------------------------------------------------------------------------


def _serve(components: tuple[str, ...], config: Config, logic: str) -> None:
    from infrax.collector import settle_after_start
    from infrax.stack import Stack

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        stack = Stack(config, components=components, logic=logic)
        try:
            await stack.start()
        except OSError as error:
            raise OSError(f"cannot start {', '.join(components)}: {error}") from error
        settle_after_start()
        for name in components:
            console.print(f"[green]{name}[/] listening on {stack.urls[name]}")
        if stack.admin_token is not None:
            console.print(f"admin token in [bold]{stack.admin_token_path}[/] (the CLI here reads it from there)")
        _warn_of_trust(config, components)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        console.print("stopping…")
        await stack.stop()

    _run(main)


@app.command()
def up(
    config: Path | None = ConfigOption,
    db: str | None = DbOption,
    bus: str | None = BusOption,
    data_dir: Path | None = DataDirOption,
    logic: str = typer.Option("reference", help="job master logic"),
) -> None:
    """Run every component in this one process."""
    _serve(COMPONENTS, _config(config, db=db, bus=bus, data_dir=data_dir), logic)


def _component_command(name: str) -> None:
    def command(
        config: Path | None = ConfigOption,
        db: str | None = DbOption,
        bus: str | None = BusOption,
        data_dir: Path | None = DataDirOption,
        instance: str | None = typer.Option(None, "--name", help="instance name, stable across restarts"),
        logic: str = typer.Option("reference", help="job master logic (jobmaster only)"),
    ) -> None:
        _serve((name,), _config(config, db=db, bus=bus, data_dir=data_dir, name=instance), logic)

    command.__doc__ = f"Run the {name} alone; it reaches the others at their configured URLs."
    app.command(name=name)(command)


for _name in COMPONENTS:
    _component_command(_name)


# -- using a running system ---------------------------------------------------------------------


@app.command()
def push(
    repository: Path = typer.Argument(..., help="a local git repository"),
    revision: str = typer.Argument("HEAD"),
    branch: str | None = typer.Option(None),
    wait: bool = typer.Option(True, help="follow the job until it ends"),
    config: Path | None = ConfigOption,
) -> None:
    """Test a revision: the job master makes a job of it and runs its tasks."""
    cfg = _config(config)
    repository_path = str(repository.resolve())

    async def main() -> int:
        clients = _clients(cfg)
        job = await clients.jobmaster.push(PushSubmission(repository=repository_path, revision=revision, branch=branch))
        console.print(f"job [bold]{job.id}[/] for {job.project}@{job.revision[:12]}: {job.state}")
        if not wait:
            return 0
        job, request = await watch_job(clients, job.id, console)
        if request is not None:
            await show_failures(clients, request, console)
        return 0 if job.state == "completed" else 2

    raise typer.Exit(_run(main))


@app.command()
def status(
    job_id: str = typer.Argument(..., help="a job id, or a revision (prefix)"), config: Path | None = ConfigOption
) -> None:
    """Show a job, its tasks and partitions."""
    cfg = _config(config)

    async def main() -> None:
        clients = _clients(cfg)
        try:
            job = await clients.jobmaster.get(job_id)
        except ServiceError as error:
            if error.status != 404:
                raise
            found = await clients.jobmaster.find(job_id)
            if not found:
                raise ValueError(f"no job or revision {job_id!r}") from None
            job = found[0]
        request = await clients.scheduler.get_request(job.request_id) if job.request_id else None
        console.print(job_table(job, request))

    _run(main)


@app.command()
def jobs(
    project: str | None = typer.Option(None, help="only this project's"),
    limit: int = typer.Option(20, min=1, max=100_000, help="how many, newest first (pages are followed)"),
    config: Path | None = ConfigOption,
) -> None:
    """List jobs, newest first."""
    cfg = _config(config)

    async def main() -> None:
        table = Table("job", "project", "revision", "state", "created", title_justify="left")
        for job in await _clients(cfg).jobmaster.jobs(project, limit):
            table.add_row(
                job.id[:12], job.project, job.revision[:12], styled(job.state), f"{job.created_at:%Y-%m-%d %H:%M}"
            )
        console.print(table)

    _run(main)


@app.command()
def logs(
    partition_id: str = typer.Argument(..., help="a partition id"),
    run: int | None = typer.Option(None, help="which run (default: the latest)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the run ends"),
    config: Path | None = ConfigOption,
) -> None:
    """Print the log of a partition's run."""
    cfg = _config(config)

    async def main() -> None:
        clients = _clients(cfg)
        partition = await clients.scheduler.call("GET", f"/api/v1/partitions/{partition_id}")
        run_id = run_id_of(partition_id, partition["run"] if run is None else run)
        offset = 0
        while True:
            text, offset, complete = await clients.executioner.log(run_id, offset)
            sys.stdout.write(text)
            sys.stdout.flush()
            if complete or not follow:
                return
            await asyncio.sleep(0.5)

    _run(main)


@app.command()
def cancel(job_id: str, config: Path | None = ConfigOption) -> None:
    """Cancel a job: queued partitions never start, running ones are stopped."""
    cfg = _config(config)

    async def main() -> None:
        job = await _clients(cfg).jobmaster.cancel(job_id)
        console.print(f"job {job.id}: {job.state}")

    _run(main)


def _warn_of_trust(config: Config, components: tuple[str, ...]) -> None:
    if "provisioner" not in components:
        return
    for provider in config.providers:
        if provider.kind != "process":
            continue
        user = provider.options.get("run_as") or "this user"
        log.warning(
            "provider %s: trusted code only: task code runs on this host as %s (docs/security.md)", provider.name, user
        )
        if os.geteuid() == 0 and not provider.options.get("run_as"):
            log.warning(
                "infrax runs as root and provider %s has no run_as: task code runs as root; set `run_as` "
                "(an unprivileged user) in its options",
                provider.name,
            )


token_app = typer.Typer(help="Bearer tokens of the REST APIs (docs/security.md).", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _token_store(cfg: Config) -> Any:
    from infrax.auth import TokenStore
    from infrax.auth.runs import RunTokens
    from infrax.store import Database

    async def opened() -> tuple[Any, Any]:
        database = Database(cfg.db)
        await database.create_schema()
        return database, TokenStore(database, await RunTokens.load(database))

    return opened


@token_app.command("create")
def token_create(
    scope: list[str] = typer.Option(..., "--scope", "-s", help="a scope it holds, e.g. jobmaster:push:myproject"),
    name: str = typer.Option("cli", help="what it is for"),
    expires: float | None = typer.Option(None, help="seconds it stays valid (default: until revoked)"),
    config: Path | None = ConfigOption,
    db: str | None = DbOption,
) -> None:
    """Make a token; prints it once (store it, it is kept only as a hash)."""
    from infrax.auth import TokenError

    cfg = _config(config, db=db)

    async def main() -> None:
        database, tokens = await _token_store(cfg)()
        try:
            token_id, token = await tokens.create(name, scope, expires)
        except TokenError as error:
            raise ValueError(str(error)) from None
        finally:
            await database.close()
        console.print(f"token {token_id}:", highlight=False, style="dim")
        print(token)

    _run(main)


@token_app.command("list")
def token_list(
    config: Path | None = ConfigOption,
    db: str | None = DbOption,
    revoked: bool = typer.Option(False, help="also the revoked ones"),
) -> None:
    """Every token: id, name, scopes and dates (never the token itself)."""
    cfg = _config(config, db=db)

    async def main() -> None:
        database, tokens = await _token_store(cfg)()
        try:
            found = await tokens.list_tokens(include_revoked=revoked)
        finally:
            await database.close()
        table = Table("id", "name", "scopes", "created", "expires", "revoked")
        for t in found:
            table.add_row(
                t.id,
                t.name,
                " ".join(t.scopes),
                f"{t.created_at:%Y-%m-%d %H:%M}",
                f"{t.expires_at:%Y-%m-%d %H:%M}" if t.expires_at else "never",
                f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
            )
        console.print(table)

    _run(main)


@token_app.command("revoke")
def token_revoke(token_id: str, config: Path | None = ConfigOption, db: str | None = DbOption) -> None:
    """Revoke a token by its id: refused everywhere within 10 s."""
    cfg = _config(config, db=db)

    async def main() -> None:
        database, tokens = await _token_store(cfg)()
        try:
            if not await tokens.revoke(token_id):
                raise ValueError(f"no token {token_id} that is not revoked already")
        finally:
            await database.close()
        console.print(f"token {token_id} revoked")

    _run(main)


db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOption, db: str | None = DbOption) -> None:
    """Migrate the database to the newest schema (components also do this when they start)."""
    from infrax.store import Database, migrate

    cfg = _config(config, db=db)

    async def main() -> None:
        database = Database(cfg.db)
        try:
            await database.create_schema()
            async with database.begin() as conn:
                console.print(f"database at revision [bold]{await migrate.current(conn)}[/] (head {migrate.head()})")
        finally:
            await database.close()

    _run(main)


image_app = typer.Typer(help="The agent's container image.", no_args_is_help=True)
app.add_typer(image_app, name="image")


@image_app.command("build")
def image_build(
    url: str = typer.Option("unix:///run/infrax-podman.sock", help="Docker Engine API endpoint"),
    force: bool = typer.Option(False, help="rebuild even when the image exists"),
) -> None:
    """Build the agent image locally (no registry needed): a Debian root filesystem plus the agent."""
    from infrax.provisioner.image import ImageError, build_agent_image

    try:
        console.print(f"agent image: [bold]{build_agent_image(url, force=force)}[/]")
    except ImageError as error:
        _fail(str(error))


# -- demo and benchmark -------------------------------------------------------------------------


@app.command()
def demo(keep: bool = typer.Option(False, help="keep the demo's folder")) -> None:
    """Push a passing and then a breaking revision of a sample project through the whole system."""
    from infrax.demo import run_demo

    raise typer.Exit(_run(lambda: run_demo(console, keep=keep)))


@app.command()
def bench(
    partitions: int = typer.Option(1000, help="how many trivial partitions"),
    # 48: of 24, 32, 48, 64 and 96 warm process containers, 48 moved the most partitions on 2 cores.
    containers: int = typer.Option(48, help="warm containers"),
    backend: list[str] = typer.Option(["embedded"], help="embedded, production (PostgreSQL + RabbitMQ)"),
    postgres: str = typer.Option("postgresql://postgres@127.0.0.1:5432", help="server for 'production'"),
    amqp: str = typer.Option("amqp://guest:guest@127.0.0.1:5672/", help="broker for 'production'"),
) -> None:
    """Push N trivial partitions through the whole pipeline and print throughput and latency."""
    from infrax.bench import run_bench_on

    for name in backend:
        _run(functools.partial(run_bench_on, console, name, partitions, containers, postgres, amqp))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
