"""The artifact store interface.

An artifact belongs to an owner (a run, `<partitionId>-<run>`) and has a name that is a relative
path (`reports/junit.xml`). Its bytes go in and come out as streams of chunks, so a gigabyte is
never held in memory; what a store keeps of each is its size, content type, digest and expiry.
An artifact is written once: a second put of the same owner and name is refused, as a run's
artifacts are what the run left, not something to overwrite later.
"""

from __future__ import annotations

import abc
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

MAX_NAME = 1024
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")


class InvalidArtifactName(ValueError):
    """Not a name an artifact may have: said why, for a 4xx."""


class ArtifactNotFound(LookupError):
    pass


class ArtifactExists(Exception):
    pass


@dataclass(frozen=True)
class Artifact:
    owner: str
    name: str
    size: int
    content_type: str
    sha256: str
    created_at: datetime
    expires_at: datetime


def check_name(owner: str, name: str) -> None:
    """Refuse what could reach outside the owner's artifacts or confuse a URL or a terminal."""
    if not _OWNER.match(owner):
        raise InvalidArtifactName(f"artifact owner {owner!r} is not an id")
    if not name or len(name) > MAX_NAME:
        raise InvalidArtifactName(f"an artifact name is 1 to {MAX_NAME} characters")
    if any(ord(c) < 0x20 or c in "\\\x7f" for c in name):
        raise InvalidArtifactName(f"artifact name {name!r} holds a control character or a backslash")
    parts = name.split("/")
    if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidArtifactName(f"artifact name {name!r} is not a plain relative path")


class ArtifactStore(abc.ABC):
    @abc.abstractmethod
    async def put(
        self, owner: str, name: str, chunks: AsyncIterator[bytes], *, content_type: str, expires_at: datetime
    ) -> Artifact:
        """Store the chunks as one artifact, visible only once whole (a put that fails half way
        leaves nothing). ArtifactExists when the owner has one of that name already."""

    @abc.abstractmethod
    async def get(self, owner: str, name: str) -> Artifact:
        """What is kept of it; ArtifactNotFound when there is none (or it expired)."""

    @abc.abstractmethod
    def read(self, owner: str, name: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        """Its bytes, a chunk at a time; ArtifactNotFound on the first step when there is none."""

    @abc.abstractmethod
    async def list(self, owner: str) -> list[Artifact]:
        """The owner's artifacts, by name."""

    @abc.abstractmethod
    async def sweep(self, now: datetime) -> int:
        """Delete every artifact expired at `now`; how many went."""
