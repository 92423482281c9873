"""A request's dependent tasks: released to be planned when their dependencies have ended as they
require, or cancelled naming the dependency that did not complete. Called in the transaction that
ends a task (or plans its request), so a crash never leaves a dependent forgotten: it is pending
and ready in the store, or still waiting on a dependency that is not final."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from infrax.bus.messages import BusMessage
from infrax.model import State, TaskDefinition, is_final, utcnow
from infrax.scheduler.events import task_status
from infrax.store.tables import requests, tasks

SATISFIED = frozenset({State.COMPLETED, State.SKIPPED})  # what `all-completed` accepts of a dependency


async def release_dependents(conn: AsyncConnection, request_id: str) -> tuple[list[BusMessage], int]:
    """The request's waiting dependents whose dependencies have all ended: marked ready, or
    cancelled (and so on down the graph); the messages about them, and how many became ready."""
    # The request's row first: two transactions each ending one of a dependent's two dependencies
    # take turns here, and the second reads the first's end (each would otherwise see only its own,
    # and neither release the dependent). Its tasks' rows are not locked: ending tasks hold theirs.
    await conn.execute(select(requests.c.id).where(requests.c.id == request_id).with_for_update())
    rows = {
        row["name"]: dict(row)
        for row in (
            await conn.execute(
                select(tasks.c.id, tasks.c.request_id, tasks.c.job_id, tasks.c.name, tasks.c.state)
                .add_columns(tasks.c.definition, tasks.c.ready_at)
                .where(tasks.c.request_id == request_id)
                .order_by(tasks.c.position)
            )
        )
        .mappings()
        .all()
    }
    waiting = {
        name: TaskDefinition.model_validate(row["definition"])
        for name, row in rows.items()
        if row["state"] == State.PENDING and row["ready_at"] is None and row["definition"].get("dependsOn")
    }
    events: list[BusMessage] = []
    ready = 0
    changed = True
    while changed:  # a cancelled dependent may end the wait of its own dependents
        changed = False
        for name, definition in list(waiting.items()):
            dependencies = [rows[d] for d in definition.depends_on]
            if not all(is_final(d["state"]) for d in dependencies):
                continue
            del waiting[name]
            row = rows[name]
            unmet = [d for d in dependencies if d["state"] not in SATISFIED]
            if definition.requires == "all-completed" and unmet:
                message = f"not run: its dependency {unmet[0]['name']!r} ended {unmet[0]['state']}"
                await _set(conn, row, state=State.CANCELLED, message=message)
                events.append(task_status(row, State.CANCELLED, State.PENDING, message))
                row["state"] = State.CANCELLED
                changed = True
            else:
                await _set(conn, row, ready_at=utcnow())
                ready += 1
    return events, ready


async def _set(conn: AsyncConnection, row: dict[str, Any], **values: Any) -> None:
    await conn.execute(update(tasks).where(tasks.c.id == row["id"]).values(**values))
