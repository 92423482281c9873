"""A job's source for a container's cache: what of the job's revision the cache lacks, from the
job master's own copy of the repository (its mirror, or the local repository itself).

The container names the revisions its cache holds (`have`); the answer holds what the revision
needs besides them. For git a pack of exactly those objects (`git pack-objects --revs`, no ref
needed in the repository, self-contained so the cache indexes it alone); for Mercurial a bundle of
the changesets (`hg bundle --base`). Nothing new is no body at all. Revisions the repository does
not know (a cache filled from a force-pushed branch) are left out of `have`, not an error.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from infrax.jobmaster import git, hg
from infrax.jobmaster.vcs import Source

MAX_HAVES = 50
CHUNK = 1 << 20
_NODE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Pack:
    vcs: str
    revision: str
    path: Path | None  # None: the cache has all it needs
    shallow: list[str] = field(default_factory=list)  # a shallow pack's boundary commits (git's `shallow` file)

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self.path is not None
        try:
            with await asyncio.to_thread(self.path.open, "rb") as file:
                while chunk := await asyncio.to_thread(file.read, CHUNK):
                    yield chunk
        finally:
            await asyncio.to_thread(shutil.rmtree, self.path.parent, True)


async def pack(source: Source, revision: str, have: list[str], depth: int | None = None) -> Pack:
    """What a cache holding `have` needs to check out `revision`, in a temporary file (streamed
    then removed by `Pack.chunks`): a pack of hundreds of megabytes is never in memory. With
    `depth` (git), the revision's last `depth` commits whatever the cache holds: a shallow fetch
    into a scratch repository, packed from there, with its boundary."""
    have = [h for h in have[:MAX_HAVES] if _NODE.match(h)]
    if source.vcs == "hg":
        known = set(await hg.nodes(source.path, " or ".join(f"id({h})" for h in have))) if have else set()
    else:
        known = await git.known_commits(source.path, have)
    if revision in known:
        return Pack(source.vcs, revision, None)
    folder = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="infrax-source-"))
    path = folder / "source"
    shallow: list[str] = []
    try:
        if source.vcs == "git" and depth is not None:
            shallow = await _git_shallow_pack(source.path, revision, depth, folder)
        elif source.vcs == "hg":
            base = " or ".join(sorted(known)) or "null"
            bundle = ["bundle", "--quiet", "-r", revision, "--base", base, "--type", "none-v2", str(path)]
            await hg.hg(source.path, *bundle)
        else:
            await _git_pack(source.path, revision, sorted(known), path)
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, folder, True)
        raise
    return Pack(source.vcs, revision, path, shallow)


async def _git_shallow_pack(repository: str, revision: str, depth: int, folder: Path) -> list[str]:
    scratch = folder / "shallow.git"
    await git.git(str(folder), "init", "--quiet", "--bare", str(scratch))
    uri = Path(await asyncio.to_thread(os.path.abspath, repository)).as_uri()
    await git.git(str(scratch), "-c", "protocol.version=2", "fetch", "--quiet", f"--depth={depth}", uri, revision)
    await _git_pack(str(scratch), revision, [], folder / "source")
    boundary = scratch / "shallow"
    text = await asyncio.to_thread(boundary.read_text) if await asyncio.to_thread(boundary.exists) else ""
    await asyncio.to_thread(shutil.rmtree, scratch, True)
    return text.split()


async def _git_pack(repository: str, revision: str, have: list[str], path: Path) -> None:
    wanted = "".join([f"{revision}\n", *(f"^{h}\n" for h in have)]).encode()
    with open(path, "wb") as out:  # noqa: ASYNC230 - creating an empty file; git writes it
        process = await asyncio.create_subprocess_exec(
            "git",
            "-C",
            repository,
            "pack-objects",
            "--revs",
            "--stdout",
            "--quiet",
            stdin=asyncio.subprocess.PIPE,
            stdout=out,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        _, err = await process.communicate(wanted)
    if process.returncode != 0:
        raise git.GitError(err.decode(errors="replace").strip()[-300:] or "git pack-objects failed")
