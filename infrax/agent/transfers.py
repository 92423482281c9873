"""The agent's requests that move bytes or look at its caches: an ended run's artifact out
(`fetch-artifact`), a file in for the next run (`stage`), and which revisions a cache holds
(`source-state`). Each is the one request of its connection (docs/protocols/agent-v1.md).

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Final

from infrax.agent.artifacts import NotAnArtifact, open_artifact
from infrax.agent.checkout import KEY, CheckoutError, cache_state
from infrax.agent.protocol import ErrorCode, MessageType, error_message, send
from infrax.agent.runner import Run, sanitize_run_id
from infrax.agent.staging import STAGED_DIR_NAME, StagingError, finish_staged, open_staged

log = logging.getLogger("infrax.agent")

MAX_STAGED_BYTES: Final = 64 * 1024**3
STAGE_CHUNK: Final = 1024 * 1024

Writer = asyncio.StreamWriter
Reader = asyncio.StreamReader


async def send_artifact(writer: Writer, run: Run | None, message: dict[str, Any]) -> None:
    """One artifact of the last run, once it has ended: an `artifact` line with its size, then
    exactly that many bytes, sent from the file by the kernel (`sendfile`), then the end of the
    connection. Never of a run still going: its task could still change what it left."""
    run_id, name = message.get("runId"), message.get("name")
    if not isinstance(run_id, str) or not run_id or not isinstance(name, str):
        await send(writer, error_message(ErrorCode.BAD_REQUEST, "fields 'runId' and 'name' must be strings"))
        return
    if run is None or run.run_id != run_id or not run.finished:
        state = "has not ended" if run is not None and run.run_id == run_id else "is not this agent's last run"
        await send(writer, error_message(ErrorCode.UNKNOWN_RUN, f"run {run_id!r} {state}"))
        return
    try:
        fd, size = open_artifact(run.artifacts_dir, name)
    except NotAnArtifact as exc:
        await send(writer, error_message(ErrorCode.NO_ARTIFACT, str(exc)))
        return
    with os.fdopen(fd, "rb") as file:
        await send(writer, {"type": MessageType.ARTIFACT, "runId": run_id, "name": name, "size": size})
        await asyncio.get_running_loop().sendfile(writer.transport, file, 0, size)
        await writer.drain()


async def receive_staged(
    reader: Reader, writer: Writer, running: Run | None, workdir: Path, message: dict[str, Any]
) -> None:
    """A file for a run about to start: `size` raw bytes follow the request's line; answered
    `staged` once they are all on disk, in place."""
    run_id, name, size = message.get("runId"), message.get("name"), message.get("size")
    if (
        not isinstance(run_id, str)
        or not run_id
        or not isinstance(name, str)
        or isinstance(size, bool)
        or not isinstance(size, int)
        or not 0 <= size <= MAX_STAGED_BYTES
    ):
        await send(
            writer,
            error_message(
                ErrorCode.BAD_REQUEST,
                f"fields 'runId' and 'name' must be strings and 'size' 0 to {MAX_STAGED_BYTES} bytes",
            ),
        )
        return
    if running is not None:
        await send(writer, error_message(ErrorCode.BUSY, f"agent is busy with run {running.run_id!r}"))
        return
    try:
        directory, fd, temporary = open_staged(workdir / STAGED_DIR_NAME, sanitize_run_id(run_id), name)
    except StagingError as exc:
        await send(writer, error_message(ErrorCode.BAD_REQUEST, str(exc)))
        return
    try:
        with os.fdopen(fd, "wb") as file:
            remaining = size
            while remaining:
                chunk = await reader.read(min(remaining, STAGE_CHUNK))
                if not chunk:
                    raise asyncio.IncompleteReadError(b"", remaining)
                file.write(chunk)
                remaining -= len(chunk)
        finish_staged(directory, temporary, name.rsplit("/", 1)[-1])
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=directory)
            os.close(directory)
        raise
    log.info("staged %s (%d bytes) for run %s", name, size, run_id)
    await send(writer, {"type": MessageType.STAGED, "runId": run_id, "name": name, "size": size})


async def answer_source_state(writer: Writer, workdir: Path, message: dict[str, Any]) -> None:
    """Which revisions the cache of `key` (a project) holds: what its next checkout need not fetch."""
    key = message.get("key")
    if not isinstance(key, str) or not KEY.match(key):
        await send(writer, error_message(ErrorCode.BAD_REQUEST, "field 'key' must be a project's name"))
        return
    try:
        state = await asyncio.to_thread(cache_state, workdir, key)
    except CheckoutError as exc:
        log.warning("cache of %s unreadable (%s): it is filled again", key, exc)
        state = {"git": [], "hg": []}
    answer = {"type": MessageType.SOURCE_STATE, "key": key, "revisions": state["git"] + state["hg"], **state}
    await send(writer, answer)
