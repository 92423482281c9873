"""One behavioural suite for every artifact store: the filesystem's (the default) and the in-memory one."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from infrax.artifacts import (
    Artifact,
    ArtifactExists,
    ArtifactNotFound,
    ArtifactStore,
    FilesystemArtifacts,
    InvalidArtifactName,
    MemoryArtifacts,
)
from infrax.model import utcnow

OWNER = "p1a2b3-0"


@pytest.fixture(params=["filesystem", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    return FilesystemArtifacts(tmp_path / "artifacts") if request.param == "filesystem" else MemoryArtifacts()


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


def later(hours: float = 1) -> datetime:
    return utcnow() + timedelta(hours=hours)


async def put(store: ArtifactStore, name: str, *parts: bytes, hours: float = 1) -> Artifact:
    return await store.put(OWNER, name, chunks(*parts), content_type="text/plain", expires_at=later(hours))


async def read_all(store: ArtifactStore, name: str, chunk_size: int = 1 << 20) -> list[bytes]:
    return [chunk async for chunk in store.read(OWNER, name, chunk_size)]


async def test_an_artifact_comes_back_as_it_went_in_with_its_size_type_and_digest(store: ArtifactStore) -> None:
    stored = await put(store, "reports/junit.xml", b"<testsuite>", b"</testsuite>")

    found = await store.get(OWNER, "reports/junit.xml")
    assert found == stored
    assert (found.size, found.content_type) == (23, "text/plain")
    assert found.sha256 == hashlib.sha256(b"<testsuite></testsuite>").hexdigest()
    assert b"".join(await read_all(store, "reports/junit.xml")) == b"<testsuite></testsuite>"
    assert [len(c) for c in await read_all(store, "reports/junit.xml", chunk_size=5)] == [5, 5, 5, 5, 3]


async def test_names_that_are_folders_of_each_other_live_side_by_side_and_are_listed_by_name(
    store: ArtifactStore,
) -> None:
    await put(store, "report/a.xml", b"a")
    await put(store, "report", b"r")
    await store.put("other-0", "report", chunks(b"x"), content_type="text/plain", expires_at=later())

    assert [a.name for a in await store.list(OWNER)] == ["report", "report/a.xml"]
    assert b"".join(await read_all(store, "report")) == b"r"
    assert await store.list("nobody-0") == []


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (OWNER, "../escape"),
        (OWNER, "/etc/passwd"),
        (OWNER, "a/../../b"),
        (OWNER, "a//b"),
        (OWNER, "a\\b"),
        (OWNER, "line\nbreak"),
        (OWNER, ""),
        (OWNER, "x" * 1025),
        ("../other", "a"),
    ],
)
async def test_a_name_that_could_reach_outside_its_owner_is_refused(
    store: ArtifactStore, owner: str, name: str
) -> None:
    with pytest.raises(InvalidArtifactName):
        await store.put(owner, name, chunks(b"x"), content_type="text/plain", expires_at=later())
    with pytest.raises(InvalidArtifactName):
        await store.get(owner, name)


async def test_an_artifact_is_written_once_and_of_two_puts_at_once_exactly_one_wins(store: ArtifactStore) -> None:
    await put(store, "once", b"first")
    with pytest.raises(ArtifactExists):
        await put(store, "once", b"second")

    results = await asyncio.gather(
        put(store, "raced", b"a" * 10, b"b"), put(store, "raced", b"c"), return_exceptions=True
    )

    assert sorted(type(r).__name__ for r in results) == ["Artifact", "ArtifactExists"]
    kept = next(r for r in results if not isinstance(r, Exception))
    assert await store.get(OWNER, "raced") == kept
    assert b"".join(await read_all(store, "once")) == b"first"


async def test_a_put_whose_stream_breaks_leaves_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    async def broken() -> AsyncIterator[bytes]:
        yield b"half of it"
        raise ConnectionResetError("the agent went away")

    with pytest.raises(ConnectionResetError):
        await store.put(OWNER, "dist/app.tar.gz", broken(), content_type="application/gzip", expires_at=later())

    assert await store.list(OWNER) == []
    with pytest.raises(ArtifactNotFound):
        await store.get(OWNER, "dist/app.tar.gz")
    if isinstance(store, FilesystemArtifacts):
        assert [p.name for p in (tmp_path / "artifacts").rglob("*") if p.is_file()] == []
    await put(store, "dist/app.tar.gz", b"whole")  # the name is free for the next try


async def test_an_expired_artifact_is_gone_at_once_and_swept_from_the_store(
    store: ArtifactStore, tmp_path: Path
) -> None:
    await put(store, "old.log", b"o", hours=-1)
    await put(store, "new.log", b"n", hours=1)

    assert [a.name for a in await store.list(OWNER)] == ["new.log"]
    with pytest.raises(ArtifactNotFound):
        await store.get(OWNER, "old.log")
    with pytest.raises(ArtifactNotFound):
        await read_all(store, "old.log")
    assert await store.sweep(utcnow()) == 1
    assert await store.sweep(utcnow()) == 0
    assert await store.sweep(utcnow() + timedelta(hours=2)) == 1
    if isinstance(store, FilesystemArtifacts):
        assert not (tmp_path / "artifacts" / OWNER).exists()


async def test_a_large_artifact_goes_through_the_filesystem_store_in_bounded_memory(tmp_path: Path) -> None:
    store = FilesystemArtifacts(tmp_path / "artifacts")
    megabyte = bytes(range(256)) * 4096

    async def hundred_megabytes() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield megabyte

    tracemalloc.start()
    try:
        stored = await store.put(
            OWNER, "big.bin", hundred_megabytes(), content_type="application/octet-stream", expires_at=later()
        )
        digest, size = hashlib.sha256(), 0
        async for chunk in store.read(OWNER, "big.bin"):
            digest.update(chunk)
            size += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert size == stored.size == 100 << 20 and digest.hexdigest() == stored.sha256
    assert peak < 8 << 20, f"peak {peak / 1e6:.1f} MB for a 100 MB artifact"
