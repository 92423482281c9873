"""Keeping what a run left: its artifacts, fetched from its agent when it ends, and its log.

The agent lists what the task wrote under `$INFRAX_ARTIFACTS_DIR` in the run's `exit` message;
each is fetched over a connection of its own and streamed into the artifact store, so neither
side holds more than a chunk of it. The listing is the task's word, and the task is hostile:
every name is checked here again, and what a run may keep is bounded in size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mimetypes
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from infrax.agent.client import AgentClient, AgentConnectionLost, AgentError, AgentUnreachable
from infrax.artifacts import (
    Artifact,
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStore,
    InvalidArtifactName,
    check_name,
)
from infrax.model import PartitionOffer, utcnow

log = logging.getLogger(__name__)

# infrax's own artifacts of a run (its log); a task's names may not start with it.
RESERVED_PREFIX = "infrax/"
LOG_ARTIFACT = "infrax/log.txt"
SWEEP_INTERVAL = 3600.0
FILE_CHUNK = 1 << 20


class MissingFetch(Exception):
    """A fetch's artifact is in none of its task's runs: the run fails, saying which."""


@dataclass
class Kept:
    count: int = 0
    size: int = 0
    refused: int = 0
    names: list[str] = field(default_factory=list)


class ArtifactKeeper:
    def __init__(
        self,
        store: ArtifactStore,
        expiry: timedelta = timedelta(days=30),
        max_run_bytes: int = 10 << 30,
        sweep_interval: float = SWEEP_INTERVAL,
        log_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.log_dir = log_dir  # runs' logs, swept when they expire
        self.expiry = expiry
        self.max_run_bytes = max_run_bytes
        self.sweep_interval = sweep_interval
        self._sweeper: asyncio.Task[None] | None = None

    async def keep(
        self, client: AgentClient, run_id: str, exit_message: dict[str, Any], note: Callable[[str], object]
    ) -> Kept:
        """Every artifact the exit message lists, fetched and stored; what was not kept is noted
        in the run's log (`note`), with why. A run resumed after a restart of this executioner
        finds what its first try kept: those are not fetched twice."""
        kept = Kept()
        listed = exit_message.get("artifacts")
        omitted = exit_message.get("artifactsOmitted")
        if isinstance(omitted, int) and omitted > 0:
            note(f"{omitted} more files under $INFRAX_ARTIFACTS_DIR were not listed (at most 1,000 a run)")
        if not isinstance(listed, list):
            return kept
        expires_at = utcnow() + self.expiry
        for entry in listed:
            name = entry.get("name") if isinstance(entry, dict) else None
            size = entry.get("size") if isinstance(entry, dict) else None
            reason = self._refusal(run_id, name, size, kept)
            if reason is not None:
                kept.refused += 1
                note(f"artifact not kept: {reason}")
                continue
            assert isinstance(name, str) and isinstance(size, int)
            try:
                artifact = await self.store.put(
                    run_id,
                    name,
                    client.fetch_artifact(run_id, name),
                    content_type=content_type_of(name),
                    expires_at=expires_at,
                )
            except ArtifactExists:
                artifact = await self.store.get(run_id, name)
            except (AgentError, AgentConnectionLost, AgentUnreachable, OSError) as error:
                kept.refused += 1
                note(f"artifact {name} not kept: {error}")
                continue
            kept.count += 1
            kept.size += artifact.size
            kept.names.append(name)
        if kept.count:
            note(f"kept {kept.count} artifacts ({_size(kept.size)})")
        return kept

    async def keep_own(self, run_id: str, name: str, data: bytes, content_type: str) -> None:
        """One of infrax's own artifacts of the run (under `infrax/`), kept as long as the task's;
        one kept already (the run resumed after a restart) stays as it was."""
        assert name.startswith(RESERVED_PREFIX)

        async def chunks() -> AsyncIterator[bytes]:
            yield data

        with contextlib.suppress(ArtifactExists):
            await self.store.put(run_id, name, chunks(), content_type=content_type, expires_at=utcnow() + self.expiry)

    def _refusal(self, run_id: str, name: Any, size: Any, kept: Kept) -> str | None:
        if not isinstance(name, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return "the agent listed an entry without a name and a size"
        try:
            check_name(run_id, name)
        except InvalidArtifactName as error:
            return str(error)
        if name.startswith(RESERVED_PREFIX):
            return f"{name!r}: names under {RESERVED_PREFIX} are infrax's own"
        if kept.size + size > self.max_run_bytes:
            return f"{name} ({_size(size)}) would take the run past its {_size(self.max_run_bytes)} of artifacts"
        return None

    def log_artifact(self, run_id: str, path: Path) -> Artifact | None:
        """The run's log as one of its artifacts, read where the executioner writes it: copying it
        into the store at every run's end was a file, a rename and two syncs a partition, a third
        of PostgreSQL's trivial-partition throughput on this machine. Expires with the others."""
        try:
            info = path.stat()
        except OSError:
            return None
        written = datetime.fromtimestamp(info.st_mtime, UTC)
        return Artifact(
            run_id, LOG_ARTIFACT, info.st_size, "text/plain; charset=utf-8", "", written, written + self.expiry
        )

    # -- fetches -----------------------------------------------------------------------------

    async def stage_fetches(self, client: AgentClient, offer: PartitionOffer, note: Callable[[str], object]) -> None:
        """Each of the run's fetches put in place on its agent, from the first of its task's runs
        that left it; MissingFetch when none did (the dependency's doing, not infrax's)."""
        for fetch in offer.fetches:
            found = None
            for owner in fetch.run_ids:
                with contextlib.suppress(ArtifactNotFound, InvalidArtifactName):
                    found = await self.store.get(owner, fetch.artifact)
                    break
            if found is None:
                raise MissingFetch(
                    f"fetch {fetch.artifact!r} from {fetch.task!r}: none of its completed runs left it "
                    f"({len(fetch.run_ids)} looked at)"
                )
            await client.stage(offer.run_id, fetch.artifact, found.size, self.store.read(found.owner, found.name))
            note(f"fetched {fetch.artifact} ({_size(found.size)}) from {fetch.task}, run {found.owner}")

    # -- expiry ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="artifact-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    async def sweep(self, now: datetime) -> int:
        """Every artifact, and every log, expired at `now`; how many went."""
        swept = await self.store.sweep(now)
        if self.log_dir is not None:
            swept += await asyncio.to_thread(_sweep_logs, self.log_dir, (now - self.expiry).timestamp())
        return swept

    async def _sweep_forever(self) -> None:
        while True:
            try:
                swept = await self.sweep(utcnow())
                if swept:
                    log.info("removed %d expired artifacts and logs", swept)
            except OSError as error:
                log.warning("could not sweep expired artifacts: %s", error)
            await asyncio.sleep(self.sweep_interval)


def content_type_of(name: str) -> str:
    if name.endswith(".log"):  # unknown to mimetypes; a browser shows it rather than downloads it
        return "text/plain; charset=utf-8"
    guessed, encoding = mimetypes.guess_type(name, strict=False)
    if guessed is None or encoding is not None:  # `dist.tar.gz` is gzip data, not a tar file
        return {"gzip": "application/gzip", "bzip2": "application/x-bzip2", "xz": "application/x-xz"}.get(
            encoding or "", "application/octet-stream"
        )
    if guessed.startswith("text/") or guessed in ("application/xml", "application/json"):
        return f"{guessed}; charset=utf-8"
    return guessed


def _sweep_logs(log_dir: Path, before: float) -> int:
    swept = 0
    for path in log_dir.glob("*/*.log"):
        try:
            if path.stat().st_mtime < before:
                path.unlink()
                swept += 1
        except OSError:
            continue
    return swept


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(path.open, "rb") as file:
        while chunk := await asyncio.to_thread(file.read, FILE_CHUNK):
            yield chunk


def _size(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    scaled = float(size)
    for unit in ("KB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000 or unit == "GB":
            break
    return f"{scaled:.1f} {unit}"
