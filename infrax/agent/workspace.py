"""The agent's run directories: a fresh one for each run, the old ones removed.

Every run gets `<workdir>/runs/<name>/` holding its bootstrapper, `files.txt`, an empty
`report/` and an empty `artifacts/`, and nothing else of earlier runs is left under `runs/`. Old directories are
renamed into `.trash/` at once and removed by a thread of their own, so a run never waits
for a large checkout to be deleted.

A run that leaves its directory with just those four entries (`report/` and `artifacts/` still
empty, the two files still plain files) hands it on: it is renamed for the next run, `files.txt` is
written again and the bootstrapper too unless it still holds, byte for byte and mode 0755,
what the next run needs. On a container running short partition after partition, making and
deleting those directories was most of the agent's own work (measured with `make bench`);
for the run nothing changes.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Final

BOOTSTRAPPER_NAME: Final = "bootstrapper"
FILES_LIST_NAME: Final = "files.txt"
REPORT_DIR_NAME: Final = "report"
ARTIFACTS_DIR_NAME: Final = "artifacts"
TRASH_DIR_NAME: Final = ".trash"  # beside runs/: old run directories on their way out
_ENTRIES: Final = frozenset({BOOTSTRAPPER_NAME, FILES_LIST_NAME, REPORT_DIR_NAME, ARTIFACTS_DIR_NAME})
_EMPTY_DIRECTORIES: Final = (REPORT_DIR_NAME, ARTIFACTS_DIR_NAME)


class Workspace:
    def __init__(self, workdir: Path) -> None:
        self.runs_dir = workdir / "runs"
        self.trash = TrashCollector(workdir / TRASH_DIR_NAME)
        self._handed: Path | None = None  # the last run's directory

    def prepare(self, name: str, bootstrapper: bytes, files: list[str]) -> Path:
        """The directory for the next run, ready; raises OSError when it cannot be made."""
        directory = self.runs_dir / name
        files_text = "".join(f"{file}\n" for file in files).encode()
        reusable = self._reusable()
        self._handed = None
        if reusable is None:  # else runs/ holds it
            self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._clear(keep=reusable)
        if reusable is not None:
            if reusable != directory:
                os.rename(reusable, directory)
            if not _holds(directory / BOOTSTRAPPER_NAME, bootstrapper, 0o755):
                _write(directory / BOOTSTRAPPER_NAME, bootstrapper, 0o755)
            _write(directory / FILES_LIST_NAME, files_text, 0o644)
        else:
            directory.mkdir()
            for name in _EMPTY_DIRECTORIES:
                (directory / name).mkdir()
            _write(directory / FILES_LIST_NAME, files_text, 0o644)
            _write(directory / BOOTSTRAPPER_NAME, bootstrapper, 0o755)
        self._handed = directory
        return directory

    def _reusable(self) -> Path | None:
        """The last run's directory if it holds just the entries it got, its folders empty."""
        if self._handed is None:
            return None
        try:
            with os.scandir(self._handed) as scan:
                entries = {entry.name: entry for entry in scan}
            if (
                entries.keys() != _ENTRIES
                or not all(entries[name].is_dir(follow_symlinks=False) for name in _EMPTY_DIRECTORIES)
                or not entries[BOOTSTRAPPER_NAME].is_file(follow_symlinks=False)
                or not entries[FILES_LIST_NAME].is_file(follow_symlinks=False)
            ):
                return None
            for name in _EMPTY_DIRECTORIES:
                with os.scandir(entries[name].path) as inside:
                    if next(inside, None) is not None:
                        return None
        except OSError:
            return None
        return self._handed

    def _clear(self, keep: Path | None) -> None:
        """Every entry of `runs/` but the one handed on goes: directories to the trash, the rest unlinked."""
        with os.scandir(self.runs_dir) as scan:
            entries = [entry for entry in scan if keep is None or entry.path != str(keep)]
        directories = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                directories.append(entry)
            else:
                Path(entry.path).unlink(missing_ok=True)
        if directories:
            self.trash.directory.mkdir(exist_ok=True)
            for entry in directories:
                os.rename(entry.path, self.trash.directory / f"{entry.name}-{time.monotonic_ns()}")
            self.trash.empty_soon()


class TrashCollector:
    """Removes old run directories in one background thread, so a run never waits for it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None

    def empty_soon(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="trash", daemon=True)
            self._thread.start()
        self._wanted.set()

    def _work(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            for entry in list(self.directory.iterdir()) if self.directory.is_dir() else []:
                shutil.rmtree(entry, ignore_errors=True)


def _write(path: Path, content: bytes, mode: int) -> None:
    # O_NOFOLLOW: a file a run replaced with a symlink is never written through. Overwritten in
    # place and cut only where the old content was longer, and the mode set only where it differs
    # (the umask may have narrowed it): truncating and chmod-ing are journal work for the disk.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as file:
        info = os.fstat(fd)
        file.write(content)
        file.flush()
        if info.st_size > len(content):
            os.ftruncate(fd, len(content))
        if info.st_mode & 0o7777 != mode:
            os.fchmod(fd, mode)


def _holds(path: Path, content: bytes, mode: int) -> bool:
    """Whether the plain file at `path` has exactly this content and mode."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if info.st_size != len(content) or info.st_mode & 0o7777 != mode:
            return False
        return file.read(len(content) + 1) == content
