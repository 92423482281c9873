"""The `infrax` command: servers, tokens, the schema, the agent image, the demo and the benchmark
here; the commands that use a running system in `infrax.cli_jobs`; what all share (exit codes,
consoles) in `infrax.cli_support`."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from infrax import cli_jobs, cli_queue, cli_worker
from infrax.cli_support import (
    USAGE,
    BusOption,
    ConfigOption,
    DataDirOption,
    DbOption,
    JsonOption,
    console,
    fail,
    load,
    open_files_as_allowed,
    print_json,
    run,
    run_event_loop,
)
from infrax.config import COMPONENTS, Config

__all__ = ["app", "main", "run_event_loop"]

app = typer.Typer(
    help="infrax: continuous-integration task execution.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
log = logging.getLogger("infrax")
LogFormatOption = typer.Option("text", "--log-format", help="text, or json: one object a line (to stderr)")
LogRequestsOption = typer.Option(False, "--log-requests", help="also a line for every HTTP request served and made")
cli_jobs.register(app)
cli_queue.register(app)
cli_worker.register(app)
cli_worker.register_workers(app)


# -- servers ------------------------------------------------------------------------------------


def _serve(components: tuple[str, ...], config: Config, logic: str, log_format: str = "text") -> None:
    from infrax.collector import settle_after_start
    from infrax.logs import configure
    from infrax.stack import Stack

    try:
        configure(log_format, requests=config.log_requests)
    except ValueError as error:
        fail(str(error), USAGE)

    open_files_as_allowed()

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

    run(main)


@app.command()
def up(
    config: Path | None = ConfigOption,
    db: str | None = DbOption,
    bus: str | None = BusOption,
    data_dir: Path | None = DataDirOption,
    logic: str = typer.Option("reference", help="job master logic"),
    log_format: str = LogFormatOption,
    log_requests: bool = LogRequestsOption,
) -> None:
    """Run every component in this one process."""
    cfg = load(config, db=db, bus=bus, data_dir=data_dir, log_requests=log_requests or None)
    _serve(COMPONENTS, cfg, logic, log_format)


def _component_command(name: str) -> None:
    def command(
        config: Path | None = ConfigOption,
        db: str | None = DbOption,
        bus: str | None = BusOption,
        data_dir: Path | None = DataDirOption,
        instance: str | None = typer.Option(None, "--name", help="instance name, stable across restarts"),
        logic: str = typer.Option("reference", help="job master logic (jobmaster only)"),
        log_format: str = LogFormatOption,
        log_requests: bool = LogRequestsOption,
    ) -> None:
        cfg = load(config, db=db, bus=bus, data_dir=data_dir, name=instance, log_requests=log_requests or None)
        _serve((name,), cfg, logic, log_format)

    command.__doc__ = f"Run the {name} alone; it reaches the others at their configured URLs."
    app.command(name=name)(command)


for _name in COMPONENTS:
    _component_command(_name)


def _warn_of_trust(config: Config, components: tuple[str, ...]) -> None:
    if "provisioner" not in components:
        return
    for provider in config.providers:
        if provider.kind != "process":
            continue
        run_as = provider.options.get("run_as") or ("container" if os.geteuid() == 0 else "self")
        if run_as == "container":
            log.info("provider %s: task code runs as a user of each container's own", provider.name)
        elif run_as == "self" and os.geteuid() == 0:
            log.warning(
                "provider %s has run_as: self and infrax runs as root: task code runs as root on this host; "
                "for trusted code only (docs/security.md)",
                provider.name,
            )
        else:
            log.warning(
                "provider %s: trusted code only: task code runs on this host as %s, "
                "and every container as the same user (docs/security.md)",
                provider.name,
                "this user" if run_as == "self" else run_as,
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

    cfg = load(config, db=db)

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

    run(main)


@token_app.command("list")
def token_list(
    config: Path | None = ConfigOption,
    db: str | None = DbOption,
    revoked: bool = typer.Option(False, help="also the revoked ones"),
    as_json: bool = JsonOption,
) -> None:
    """Every token: id, name, scopes and dates (never the token itself)."""
    cfg = load(config, db=db)

    async def main() -> None:
        database, tokens = await _token_store(cfg)()
        try:
            found = await tokens.list_tokens(include_revoked=revoked)
        finally:
            await database.close()
        if as_json:
            print_json([t.model_dump(mode="json", by_alias=True) for t in found])
            return
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

    run(main)


@token_app.command("revoke")
def token_revoke(token_id: str, config: Path | None = ConfigOption, db: str | None = DbOption) -> None:
    """Revoke a token by its id: refused everywhere within 10 s."""
    cfg = load(config, db=db)

    async def main() -> None:
        database, tokens = await _token_store(cfg)()
        try:
            if not await tokens.revoke(token_id):
                raise ValueError(f"no token {token_id} that is not revoked already")
        finally:
            await database.close()
        console.print(f"token {token_id} revoked")

    run(main)


db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(config: Path | None = ConfigOption, db: str | None = DbOption) -> None:
    """Migrate the database to the newest schema (components also do this when they start)."""
    from infrax.store import Database, migrate

    cfg = load(config, db=db)

    async def main() -> None:
        database = Database(cfg.db)
        try:
            await database.create_schema()
            async with database.begin() as conn:
                console.print(f"database at revision [bold]{await migrate.current(conn)}[/] (head {migrate.head()})")
        finally:
            await database.close()

    run(main)


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
        fail(str(error))


# -- demo and benchmark -------------------------------------------------------------------------


@app.command()
def demo(keep: bool = typer.Option(False, help="keep the demo's folder")) -> None:
    """Push a passing and then a breaking revision of a sample project through the whole system."""
    from infrax.demo import run_demo

    raise typer.Exit(run(lambda: run_demo(console, keep=keep)))


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
        run(functools.partial(run_bench_on, console, name, partitions, containers, postgres, amqp))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
