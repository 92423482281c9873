"""Artifacts as files under one folder: `<root>/<owner>/<key>.json` says what an artifact is, and
names its bytes, `<key>.<unique>.data` beside it; the key is a digest of the name, so names that
are folders of each other (`report`, `report/a.xml`) and names no file system likes live side by
side, and no name ever becomes a path.

Bytes are written to a temporary file, synced, and renamed; the description is written last,
linked in place so that of two puts of one name exactly one wins: an artifact is there whole, or
not at all, across a crash.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

from infrax.artifacts.base import Artifact, ArtifactExists, ArtifactNotFound, ArtifactStore, check_name
from infrax.model import utcnow


class FilesystemArtifacts(ArtifactStore):
    def __init__(self, root: Path) -> None:
        self.root = root

    def _key(self, owner: str, name: str) -> Path:
        return self.root / owner / hashlib.sha256(name.encode()).hexdigest()[:40]

    async def put(
        self, owner: str, name: str, chunks: AsyncIterator[bytes], *, content_type: str, expires_at: datetime
    ) -> Artifact:
        check_name(owner, name)
        key = self._key(owner, name)
        meta = key.with_suffix(".json")
        if meta.exists():
            raise ArtifactExists(f"{owner} has an artifact {name!r} already")
        await asyncio.to_thread(key.parent.mkdir, parents=True, exist_ok=True)
        unique = uuid.uuid4().hex
        data = key.parent / f"{key.name}.{unique}.data"
        partial = key.parent / f".{unique}.partial"
        digest, size = hashlib.sha256(), 0
        fd = await asyncio.to_thread(os.open, partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            async for chunk in chunks:
                await asyncio.to_thread(_write_all, fd, chunk)
                digest.update(chunk)
                size += len(chunk)
            await asyncio.to_thread(os.fsync, fd)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        os.close(fd)
        artifact = Artifact(owner, name, size, content_type, digest.hexdigest(), utcnow(), expires_at)
        try:
            await asyncio.to_thread(_publish, partial, data, meta, _describe(artifact, data.name))
        except FileExistsError:
            raise ArtifactExists(f"{owner} has an artifact {name!r} already") from None
        return artifact

    async def get(self, owner: str, name: str) -> Artifact:
        check_name(owner, name)
        artifact, _ = await asyncio.to_thread(_load, self._key(owner, name).with_suffix(".json"))
        if artifact is None or artifact.name != name or artifact.expires_at <= utcnow():
            raise ArtifactNotFound(f"{owner} has no artifact {name!r}")
        return artifact

    async def read(self, owner: str, name: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        check_name(owner, name)
        meta = self._key(owner, name).with_suffix(".json")
        artifact, data = await asyncio.to_thread(_load, meta)
        if artifact is None or data is None or artifact.name != name or artifact.expires_at <= utcnow():
            raise ArtifactNotFound(f"{owner} has no artifact {name!r}")
        try:
            handle = await asyncio.to_thread(open, meta.parent / data, "rb")
        except FileNotFoundError:  # swept between the description and the bytes
            raise ArtifactNotFound(f"{owner} has no artifact {name!r}") from None
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    async def list(self, owner: str) -> list[Artifact]:
        check_name(owner, "x")
        now = utcnow()
        found = await asyncio.to_thread(_load_all, self.root / owner)
        return sorted((a for a, _ in found if a.expires_at > now), key=lambda a: a.name)

    async def sweep(self, now: datetime) -> int:
        return await asyncio.to_thread(self._sweep, now)

    # -- in a thread ----------------------------------------------------------------------

    def _sweep(self, now: datetime) -> int:
        swept = 0
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            for artifact, meta in _load_all(folder):
                if artifact.expires_at <= now:
                    _, data = _load(meta)
                    meta.unlink(missing_ok=True)  # first: from here on it is not there
                    if data:
                        (folder / data).unlink(missing_ok=True)
                    swept += 1
            for partial in folder.glob(".*.partial"):  # a put a crash cut short
                if partial.stat().st_mtime < now.timestamp() - 24 * 3600:
                    partial.unlink(missing_ok=True)
            if not any(folder.iterdir()):
                folder.rmdir()
        return swept


def _load(meta: Path) -> tuple[Artifact | None, str | None]:
    try:
        description = json.loads(meta.read_text())
    except (FileNotFoundError, ValueError):
        return None, None
    return _artifact(description), description["data"]


def _load_all(folder: Path) -> list[tuple[Artifact, Path]]:
    found = []
    for meta in folder.glob("*.json") if folder.is_dir() else []:
        artifact, data = _load(meta)
        if artifact is not None and data is not None:
            found.append((artifact, meta))
    return found


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _publish(partial: Path, data: Path, meta: Path, description: str) -> None:
    os.rename(partial, data)
    staged = meta.with_name(f".{data.name}.json")
    staged.write_text(description)
    with open(staged, "rb") as handle:
        os.fsync(handle.fileno())
    try:
        os.link(staged, meta)  # fails when the name was published meanwhile: one put wins
    except FileExistsError:
        data.unlink(missing_ok=True)
        raise
    finally:
        staged.unlink(missing_ok=True)
    directory = os.open(meta.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _describe(artifact: Artifact, data: str) -> str:
    return json.dumps(
        {
            "owner": artifact.owner,
            "name": artifact.name,
            "size": artifact.size,
            "contentType": artifact.content_type,
            "sha256": artifact.sha256,
            "createdAt": artifact.created_at.isoformat(),
            "expiresAt": artifact.expires_at.isoformat(),
            "data": data,
        }
    )


def _artifact(description: dict[str, object]) -> Artifact:
    return Artifact(
        owner=str(description["owner"]),
        name=str(description["name"]),
        size=int(description["size"]),  # type: ignore[call-overload]
        content_type=str(description["contentType"]),
        sha256=str(description["sha256"]),
        created_at=datetime.fromisoformat(str(description["createdAt"])),
        expires_at=datetime.fromisoformat(str(description["expiresAt"])),
    )
