"""One way to read a revision, whichever the version control system: git or Mercurial."""

from __future__ import annotations

from dataclasses import dataclass

from infrax.jobmaster import git, hg


class VcsError(Exception):
    """The repository or revision cannot be read; the message says why."""


@dataclass(frozen=True)
class Source:
    """A local repository (or mirror) the job master reads a revision from."""

    vcs: str  # "git" | "hg"
    path: str

    @staticmethod
    def detect(path: str) -> Source:
        return Source("hg" if hg.is_hg(path) else "git", path)

    async def resolve(self, revision: str) -> str:
        try:
            if self.vcs == "hg":
                return await hg.resolve(self.path, revision)
            return await git.resolve(self.path, revision)
        except (git.GitError, hg.HgError) as error:
            raise VcsError(str(error)) from error

    async def read_file(self, revision: str, path: str) -> bytes | None:
        if self.vcs == "hg":
            return await hg.read_file(self.path, revision, path)
        return await git.read_file(self.path, revision, path)

    async def list_files(self, revision: str) -> list[str]:
        try:
            if self.vcs == "hg":
                return await hg.list_files(self.path, revision)
            return await git.list_files(self.path, revision)
        except (git.GitError, hg.HgError) as error:
            raise VcsError(str(error)) from error

    async def file_sizes(self, revision: str) -> dict[str, int]:
        """Bytes of every file of the revision; empty when they cannot be read (they only guide the
        optimizer)."""
        try:
            if self.vcs == "hg":
                return await hg.file_sizes(self.path, revision)
            return await git.file_sizes(self.path, revision)
        except (git.GitError, hg.HgError):
            return {}

    async def author(self, revision: str) -> str | None:
        """The revision's author's e-mail address, or None when it cannot be read."""
        try:
            if self.vcs == "hg":
                return await hg.author_email(self.path, revision) or None
            return await git.author_email(self.path, revision) or None
        except (git.GitError, hg.HgError):
            return None

    async def changed_paths(self, revision: str) -> list[str]:
        try:
            if self.vcs == "hg":
                return await hg.changed_paths(self.path, revision)
            return await git.changed_paths(self.path, revision)
        except (git.GitError, hg.HgError) as error:
            raise VcsError(str(error)) from error
