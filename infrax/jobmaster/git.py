"""Reading a git repository at a revision, without a work tree."""

from __future__ import annotations

import asyncio


class GitError(Exception):
    """git refused; the message is git's own, trimmed."""


async def git(repository: str, *args: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        "git", "-C", repository, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise GitError(err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"git {args[0]} failed")
    return out


async def resolve(repository: str, revision: str) -> str:
    try:
        return (await git(repository, "rev-parse", "--verify", "--end-of-options", f"{revision}^{{commit}}")).decode().strip()
    except GitError as error:
        raise GitError(f"{repository}: no revision {revision!r} ({error})") from error


async def read_file(repository: str, revision: str, path: str) -> bytes | None:
    try:
        return await git(repository, "show", f"{revision}:{path}")
    except GitError:
        return None


async def list_files(repository: str, revision: str) -> list[str]:
    return (await git(repository, "ls-tree", "-r", "--name-only", "-z", revision)).decode().split("\0")[:-1]


async def changed_paths(repository: str, revision: str) -> list[str]:
    """Paths the revision changed against its first parent (every path for a root commit)."""
    out = await git(repository, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", "--root", "-m",
                    "--first-parent", revision)
    return sorted(set(out.decode().split("\0")[:-1]))
