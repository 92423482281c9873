"""Reading a git repository at a revision, without a work tree, and fetching into a bare mirror."""

from __future__ import annotations

import asyncio
import os

ZERO = "0" * 40
# Fetching from a URL a webhook named: never prompt for credentials, never run a transport helper.
_SAFE = ("-c", "protocol.ext.allow=never", "-c", "core.askPass=true")
_ENV = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}


class GitError(Exception):
    """git refused; the message is git's own, trimmed."""


async def git(repository: str, *args: str) -> bytes:
    process = await asyncio.create_subprocess_exec(
        "git",
        *_SAFE,
        "-C",
        repository,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
        env=_ENV,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise GitError(
            err.decode(errors="replace").strip().splitlines()[-1] if err.strip() else f"git {args[0]} failed"
        )
    return out


async def resolve(repository: str, revision: str) -> str:
    try:
        return (
            (await git(repository, "rev-parse", "--verify", "--end-of-options", f"{revision}^{{commit}}"))
            .decode()
            .strip()
        )
    except GitError as error:
        raise GitError(f"{repository}: no revision {revision!r} ({error})") from error


async def has_commit(repository: str, revision: str) -> bool:
    try:
        await git(repository, "cat-file", "-e", f"{revision}^{{commit}}")
    except GitError:
        return False
    return True


async def known_commits(repository: str, revisions: list[str]) -> set[str]:
    """Which of `revisions` (full ids) are commits of the repository: one `git cat-file` for all."""
    if not revisions:
        return set()
    process = await asyncio.create_subprocess_exec(
        "git",
        *_SAFE,
        "-C",
        repository,
        "cat-file",
        "--batch-check=%(objectname) %(objecttype)",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_ENV,
    )
    out, _ = await process.communicate("".join(f"{r}\n" for r in revisions).encode())
    found = {line.split()[0] for line in out.decode(errors="replace").splitlines() if line.endswith(" commit")}
    return found & set(revisions)


async def read_file(repository: str, revision: str, path: str) -> bytes | None:
    try:
        return await git(repository, "show", f"{revision}:{path}")
    except GitError:
        return None


async def author_email(repository: str, revision: str) -> str:
    return (await git(repository, "log", "-1", "--format=%ae", revision)).decode().strip()


async def list_files(repository: str, revision: str) -> list[str]:
    return (await git(repository, "ls-tree", "-r", "--name-only", "-z", revision)).decode().split("\0")[:-1]


async def file_sizes(repository: str, revision: str) -> dict[str, int]:
    """Bytes of every file of the revision, from its trees alone (no file is read)."""
    sizes = {}
    for entry in (await git(repository, "ls-tree", "-r", "-l", "-z", revision)).decode().split("\0")[:-1]:
        meta, _, path = entry.partition("\t")
        size = meta.split()[-1]
        if size.isdigit():  # a submodule's entry has "-"
            sizes[path] = int(size)
    return sizes


async def changed_paths(repository: str, revision: str) -> list[str]:
    """Paths the revision changed against its first parent (every path for a root commit)."""
    out = await git(
        repository, "diff-tree", "--no-commit-id", "--name-only", "-r", "-z", "--root", "-m", "--first-parent", revision
    )
    return sorted(set(out.decode().split("\0")[:-1]))


async def changed_between(repository: str, base: str, head: str) -> list[str]:
    """Paths `head` changed since `base`: what a push or pull request brings."""
    out = await git(repository, "diff", "--name-only", "-z", "--no-renames", base, head, "--")
    return sorted(set(out.decode().split("\0")[:-1]))


async def merge_base(repository: str, one: str, other: str) -> str | None:
    try:
        return (await git(repository, "merge-base", one, other)).decode().strip() or None
    except GitError:
        return None


async def init_mirror(path: str) -> None:
    process = await asyncio.create_subprocess_exec(
        "git",
        "init",
        "--quiet",
        "--bare",
        path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )
    _, err = await process.communicate()
    if process.returncode != 0:
        raise GitError(f"cannot create mirror {path}: {err.decode(errors='replace').strip()}")


async def fetch(mirror: str, url: str, *refspecs: str) -> None:
    """Fetch into a bare mirror: only what it lacks travels."""
    await git(mirror, "fetch", "--quiet", "--no-write-fetch-head", "--end-of-options", url, *refspecs)


async def commit_info(repository: str, revision: str) -> dict[str, str]:
    """The commit as a GitHub push event lists it: id, message, author's name and e-mail, timestamp."""
    out = await git(repository, "log", "-1", "--format=%H%x00%an%x00%ae%x00%aI%x00%B", revision)
    sha, name, email, timestamp, message = out.decode(errors="replace").split("\0", 4)
    return {"id": sha, "name": name, "email": email, "timestamp": timestamp, "message": message.strip()}


async def current_branch(repository: str) -> str | None:
    """The branch the repository's HEAD is on; None when detached (or for a bare mirror's odd HEAD)."""
    try:
        return (await git(repository, "symbolic-ref", "--short", "-q", "HEAD")).decode().strip() or None
    except GitError:
        return None
