"""`infrax queue`: each container type's queue, by project, as the scheduler sees it now."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from infrax.cli_support import ConfigOption, JsonOption, clients, console, load, print_json, run


def register(app: typer.Typer) -> None:
    @app.command()
    def queue(
        container_type: str | None = typer.Option(None, "--type", help="only this container type's"),
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """What waits for each container type and what runs on it, by project: each project's weight,
        its share of the running containers, and the oldest wait."""
        cfg = load(config)

        async def main() -> None:
            found: dict[str, Any] = await clients(cfg).scheduler.call("GET", "/api/v1/queue")
            types = [t for t in found["containerTypes"] if container_type in (None, t["containerType"])]
            if as_json:
                print_json(types)
                return
            if not types:
                console.print("nothing is queued or running")
            for t in types:
                oldest = t["oldestWaitSeconds"]
                table = Table(
                    "project",
                    "weight",
                    "running",
                    "share",
                    "queued",
                    title=f"{t['containerType']}: {t['running']} running"
                    f"{'' if t['capacity'] is None else ' of ' + str(t['capacity'])}, {t['queued']} queued"
                    f"{'' if oldest is None else f', the oldest waiting {oldest:.0f} s'}",
                    title_justify="left",
                )
                for p in t["projects"]:
                    table.add_row(
                        p["project"], f"{p['weight']:g}", str(p["running"]), f"{p['share']:.0%}", str(p["queued"])
                    )
                console.print(table)

        run(main)
