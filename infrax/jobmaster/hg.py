"""Reading a Mercurial repository at a revision, and its changesets in the pushlog's shape.

Runs the `hg` command (Mercurial from PyPI, installed beside this Python, or on PATH) with
HGPLAIN so its output does not depend on the user's configuration.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

_ENV = {**os.environ, "HGPLAIN": "1", "HGENCODING": "utf-8"}


class HgError(Exception):
    """hg refused; the message is hg's own, trimmed."""


def hg_command() -> str:
    beside = Path(sys.executable).parent / "hg"
    return str(beside) if beside.exists() else (shutil.which("hg") or "hg")


def is_hg(path: str) -> bool:
    return (Path(path) / ".hg").is_dir()


async def hg(repository: str, *args: str) -> bytes:
    try:
        process = await asyncio.create_subprocess_exec(
            hg_command(),
            "--cwd",
            repository,
            "--noninteractive",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            env=_ENV,
        )
    except OSError as error:
        raise HgError(f"cannot run hg: {error}") from error
    out, err = await process.communicate()
    if process.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise HgError(lines[0] if lines else f"hg {args[0]} failed")
    return out


async def resolve(repository: str, revision: str) -> str:
    try:
        nodes = (await hg(repository, "log", "-r", revision, "-T", "{node}\n")).decode().split()
    except HgError as error:
        raise HgError(f"{repository}: no revision {revision!r} ({error})") from error
    if len(nodes) != 1:
        raise HgError(f"{repository}: {revision!r} names {len(nodes)} changesets, not one")
    return nodes[0]


async def read_file(repository: str, revision: str, path: str) -> bytes | None:
    try:
        return await hg(repository, "cat", "-r", revision, "--", f"path:{path}")
    except HgError:
        return None


async def list_files(repository: str, revision: str) -> list[str]:
    return (await hg(repository, "files", "-r", revision, "-0")).decode().split("\0")[:-1]


async def file_sizes(repository: str, revision: str) -> dict[str, int]:
    """Bytes of every file of the changeset."""
    out = (await hg(repository, "files", "-r", revision, "-T", "{size} {path}\\0")).decode()
    sizes = {}
    for entry in out.split("\0")[:-1]:
        size, _, path = entry.partition(" ")
        if size.isdigit():
            sizes[path] = int(size)
    return sizes


async def changed_paths(repository: str, revision: str) -> list[str]:
    """Paths the changeset touched (hg's own `files` of it)."""
    return sorted(set((await changesets(repository, revision))[0]["files"]))


async def changesets(repository: str, revset: str) -> list[dict[str, Any]]:
    """Changesets of `revset`, oldest first, as json-pushes (version 2, full=1) lists them."""
    entries = json.loads(await hg(repository, "log", "-r", f"sort({revset}, rev)", "-T", "json", "-v"))
    return [
        {
            "author": e["user"],
            "branch": e["branch"],
            "desc": e["desc"],
            "files": e.get("files", []),
            "node": e["node"],
            "parents": e["parents"],
            "tags": e["tags"],
        }
        for e in entries
    ]


async def nodes(repository: str, revset: str) -> list[str]:
    return (await hg(repository, "log", "-r", f"sort({revset}, rev)", "-T", "{node}\n")).decode().split()


async def author_email(repository: str, revision: str) -> str:
    return (await hg(repository, "log", "-r", revision, "-T", "{author|email}")).decode().strip()


async def clone_or_pull(mirror: str, url: str) -> None:
    """A local copy of a remote repository without a working directory, pulled incrementally."""
    if is_hg(mirror):
        await hg(mirror, "pull", "--quiet", "--", url)
        return
    Path(mirror).parent.mkdir(parents=True, exist_ok=True)
    await hg(str(Path(mirror).parent), "clone", "--quiet", "--noupdate", "--", url, mirror)
