"""Where the job master reads a code host's repositories: local bare mirrors, fetched incrementally.

A clone URL from a webhook is first rewritten by the configured rules (git's `insteadOf`:
the longest matching prefix is replaced), so a deployment, or a test, can point
`https://github.com/owner/repo.git` at a local repository or an internal mirror.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from infrax.jobmaster import git, hg

_ALLOWED_SCHEMES = ("https://", "http://", "ssh://", "git://", "file://")


class MirrorError(Exception):
    """The repository could not be fetched; the message says from where and why."""


class RevisionMissing(MirrorError):
    """The repository was fetched, but it has no such revision."""


@dataclass(frozen=True)
class UrlRewrite:
    prefix: str
    replacement: str


def rewrite(url: str, rules: list[UrlRewrite]) -> str:
    matches = [r for r in rules if url.startswith(r.prefix)]
    if not matches:
        return url
    rule = max(matches, key=lambda r: len(r.prefix))
    return rule.replacement + url[len(rule.prefix) :]


def check_url(url: str) -> None:
    """A fetchable URL or absolute local path; never an option or a transport helper (`ext::`)."""
    if url.startswith(_ALLOWED_SCHEMES) or (url.startswith("/") and not url.startswith("//")):
        return
    if re.match(r"^\w[\w.-]*@[\w.-]+:[^:]", url):  # scp-like ssh: git@github.com:owner/repo.git
        return
    raise MirrorError(f"cannot fetch from {url!r}: not an http(s), ssh, git or file URL, nor an absolute path")


class Mirrors:
    """One bare mirror per repository URL under `root`; fetches of one mirror take turns."""

    def __init__(self, root: Path, rules: list[UrlRewrite] | None = None) -> None:
        self.root = Path(root)
        self.rules = list(rules or [])
        self._locks: dict[str, asyncio.Lock] = {}

    def rewrite(self, url: str) -> str:
        return rewrite(url, self.rules)

    def path(self, url: str, suffix: str = ".git") -> Path:
        name = re.sub(r"[^\w.-]", "_", url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"))[:60] or "repo"
        return self.root / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:16]}{suffix}"

    async def git(self, url: str, revision: str | None = None, head_url: str | None = None) -> str:
        """The mirror of `url` (already rewritten), holding its branches, tags and `revision`.

        A revision the branches do not reach (a pull request's head, maybe in a fork at
        `head_url`) is fetched by id and kept under `refs/infrax/commits/`, so it survives `gc`.
        """
        check_url(url)
        if head_url:
            check_url(head_url)
        mirror = str(self.path(url))
        async with self._locks.setdefault(mirror, asyncio.Lock()):
            if not Path(mirror, "HEAD").exists():  # noqa: ASYNC240 - one stat of a local file
                self.root.mkdir(parents=True, exist_ok=True)
                await git.init_mirror(mirror)
            if revision is not None and await git.has_commit(mirror, revision):
                return mirror
            try:
                await git.fetch(mirror, url, "+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
            except git.GitError as error:
                raise MirrorError(f"cannot fetch {url}: {error}") from error
            if revision is None or await git.has_commit(mirror, revision):
                return mirror
            for source in dict.fromkeys([head_url or url, url]):
                try:
                    await git.fetch(mirror, source, f"+{revision}:refs/infrax/commits/{revision}")
                except git.GitError:
                    continue
                return mirror
            raise RevisionMissing(f"revision {revision} is not in {head_url or url}")

    async def hg(self, url: str) -> str:
        """A local repository to read `url` from: itself when local, else a pulled mirror."""
        if url.startswith("/") and hg.is_hg(url):
            return url
        check_url(url)
        mirror = str(self.path(url, ".hg"))
        async with self._locks.setdefault(mirror, asyncio.Lock()):
            try:
                await hg.clone_or_pull(mirror, url)
            except hg.HgError as error:
                raise MirrorError(f"cannot pull {url}: {error}") from error
        return mirror
