"""`infrax worker`: join a pool of the provisioner at URL and run its containers on this machine;
`infrax workers`: list, drain and remove the workers of the pools."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import httpx
import typer
from rich.table import Table

from infrax.cli_support import (
    USAGE,
    ConfigOption,
    JsonOption,
    console,
    fail,
    load,
    open_files_as_allowed,
    print_json,
    run,
    token,
)
from infrax.fleet.protocol import NAME_PATTERN, POOL_PATTERN
from infrax.http import ServiceError, tcp_client


def register(app: typer.Typer) -> None:
    @app.command()
    def worker(
        provisioner: str = typer.Argument(..., help="the provisioner's URL, e.g. https://ci.example.org:7313"),
        pool: str = typer.Option(..., help="the pool it joins (a provider of kind `pool` names it)"),
        token_file: Path = typer.Option(
            None, help="file holding a token with provisioner:worker:<pool>; else INFRAX_WORKER_TOKEN"
        ),
        capacity: int = typer.Option(os.cpu_count() or 1, min=1, max=10_000, help="containers at once"),
        name: str = typer.Option(socket.gethostname(), help="unique in its pool; default the host's name"),
        data_dir: Path = typer.Option(Path(".infrax-worker"), help="its containers' folders go here"),
        run_as: str = typer.Option(
            "container", help="whom task code runs as: container (a user of each container's own), a user, or self"
        ),
        engine: str = typer.Option(
            None,
            help="run containers in this machine's Docker/Podman engine (unix:///…), not as processes",
        ),
        image: str = typer.Option(None, help="with --engine: the image (default: the agent image, built on demand)"),
    ) -> None:
        """Join a pool: dial out to the provisioner (no inbound port) and run the containers it asks for."""
        import re

        from infrax.fleet.worker import Worker, WorkerRefused
        from infrax.private import private_dir
        from infrax.provisioner.providers.base import ContainerProvider
        from infrax.provisioner.providers.process import ProcessProvider

        if not re.match(POOL_PATTERN, pool) or not re.match(NAME_PATTERN, name):
            fail(f"pool {pool!r} and name {name!r} must be letters, digits, '-', '_' (and '.' in a name)", USAGE)
        token = os.environ.get("INFRAX_WORKER_TOKEN", "").strip()
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as error:
                fail(f"cannot read the token file {token_file}: {error.strerror or error}", USAGE)
        if not token:
            fail("no token: --token-file, or INFRAX_WORKER_TOKEN", USAGE)

        home = data_dir.resolve()
        containers = home.parent / f"{home.name}-containers"  # task users must reach theirs, not this one

        async def main() -> None:
            private_dir(home)
            provider: ContainerProvider
            if engine:  # its own engine: containers, published on this machine's loopback only
                from infrax.provisioner.providers.docker import DockerProvider

                options: dict[str, object] = {"url": engine, "owner": f"worker-{pool}-{name}", "root": str(containers)}
                provider = DockerProvider("worker", capacity, {**options, **({"image": image} if image else {})})
            else:
                options = {"root": str(containers), "run_as": run_as, "stop_with_provider": True}
                provider = ProcessProvider("worker", capacity, options)
            joined = Worker(provisioner, pool, token, name, capacity, provider)
            stopping = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stopping.set)
            running = asyncio.create_task(joined.run())
            stopped = asyncio.create_task(stopping.wait())
            console.print(f"worker [green]{name}[/] joining pool {pool} at {provisioner} ({capacity} containers)")
            try:
                await asyncio.wait({running, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if running.done():
                    running.result()  # refused: say why
            except WorkerRefused as error:
                fail(f"the provisioner refused this worker: {error}")
            finally:
                running.cancel()
                stopped.cancel()
                await joined.close()

        open_files_as_allowed()  # a socket per container's channel
        run(main)


def register_workers(app: typer.Typer) -> None:
    workers = typer.Typer(help="The workers of the provisioner's pools: list, drain, remove.", no_args_is_help=True)
    app.add_typer(workers, name="workers")

    async def call(config: Path | None, method: str, path: str) -> httpx.Response:
        cfg = load(config)
        held = token(cfg)
        async with tcp_client(cfg.url("provisioner")) as client:
            client.headers.update({"Authorization": f"Bearer {held}"} if held else {})
            answer = await client.request(method, path)
        if answer.status_code >= 400:
            raise ServiceError("provisioner", answer.status_code, answer.text)
        return answer

    @workers.command("list")
    def list_workers(config: Path | None = ConfigOption, as_json: bool = JsonOption) -> None:
        """Every worker of every pool: connected, draining, capacity, containers, runs, last seen, agent."""
        listed = run(lambda: call(config, "GET", "/api/v1/workers")).json()
        if as_json:
            print_json(listed)
            return
        table = Table("pool", "name", "id", "connected", "draining", "containers", "runs", "last seen", "agent")
        for w in listed:
            seen = f"{w['lastSeenSecondsAgo']:.0f} s ago"
            held = f"{w['containers']}/{w['capacity']}"
            runs = str(w.get("runs", 0))
            row = (w["pool"], w["name"], w["id"][:12], str(w["connected"]), str(w["draining"]), held, runs, seen)
            table.add_row(*row, w["agentVersion"])
        console.print(table)

    @workers.command("drain")
    def drain(worker_id: str, config: Path | None = ConfigOption) -> None:
        """It takes no new partition; what it runs finishes; then `infrax workers remove` it."""
        shown = run(lambda: call(config, "POST", f"/api/v1/workers/{worker_id}/drain")).json()
        console.print(f"worker {shown['name']} of pool {shown['pool']} drains ({shown['containers']} containers)")

    @workers.command("remove")
    def remove(worker_id: str, config: Path | None = ConfigOption) -> None:
        """Forget a worker that runs nothing; a connected one stops."""
        run(lambda: call(config, "DELETE", f"/api/v1/workers/{worker_id}"))
        console.print(f"worker {worker_id} removed")
