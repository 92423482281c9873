"""Artifacts in this process's memory: for tests, and the same behaviour as the filesystem's."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import datetime

from infrax.artifacts.base import Artifact, ArtifactExists, ArtifactNotFound, ArtifactStore, check_name
from infrax.model import utcnow


class MemoryArtifacts(ArtifactStore):
    def __init__(self) -> None:
        self._kept: dict[tuple[str, str], tuple[Artifact, bytes]] = {}

    async def put(
        self, owner: str, name: str, chunks: AsyncIterator[bytes], *, content_type: str, expires_at: datetime
    ) -> Artifact:
        check_name(owner, name)
        if (owner, name) in self._kept:
            raise ArtifactExists(f"{owner} has an artifact {name!r} already")
        data = bytearray()
        digest = hashlib.sha256()
        async for chunk in chunks:
            data += chunk
            digest.update(chunk)
        if (owner, name) in self._kept:  # another put of the same name finished meanwhile
            raise ArtifactExists(f"{owner} has an artifact {name!r} already")
        artifact = Artifact(owner, name, len(data), content_type, digest.hexdigest(), utcnow(), expires_at)
        self._kept[(owner, name)] = (artifact, bytes(data))
        return artifact

    async def get(self, owner: str, name: str) -> Artifact:
        check_name(owner, name)
        kept = self._kept.get((owner, name))
        if kept is None or kept[0].expires_at <= utcnow():
            raise ArtifactNotFound(f"{owner} has no artifact {name!r}")
        return kept[0]

    async def read(self, owner: str, name: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        await self.get(owner, name)
        data = self._kept[(owner, name)][1]
        for start in range(0, len(data), chunk_size):
            yield data[start : start + chunk_size]

    async def list(self, owner: str) -> list[Artifact]:
        now = utcnow()
        return sorted(
            (a for (o, _), (a, _) in self._kept.items() if o == owner and a.expires_at > now), key=lambda a: a.name
        )

    async def sweep(self, now: datetime) -> int:
        expired = [key for key, (artifact, _) in self._kept.items() if artifact.expires_at <= now]
        for key in expired:
            del self._kept[key]
        return len(expired)
