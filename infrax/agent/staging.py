"""Files the executioner puts in place for a run before it starts (a dependency's artifacts):
`<workdir>/staged/<run>/<name>`, which the run finds as `$INFRAX_FETCHES_DIR/<name>`.

What earlier runs' tasks may have left under the work directory is not trusted: every folder is
opened with `O_NOFOLLOW` under its parent's descriptor, so a link planted as `staged/` or as a
folder of a name never sends the bytes elsewhere; a file is written beside its place and renamed
into it, so a second staging of the same name (after an executioner's restart) replaces it whole.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path
from typing import Final

STAGED_DIR_NAME: Final = "staged"
FETCHES_DIR_NAME: Final = "fetches"
_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StagingError(Exception):
    """The name or the place cannot take the file; the message says why."""


def open_staged(root: Path, run_name: str, name: str) -> tuple[int, int, str]:
    """(folder descriptor, file descriptor, temporary name): where to write `name` for the run."""
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts) or "\0" in name:
        raise StagingError(f"{name!r} is not a plain relative path")
    try:
        if root.is_symlink() or (root.exists() and not root.is_dir()):
            root.unlink()
        root.mkdir(exist_ok=True)
        directory = os.open(root, _DIRECTORY)
        for part in [run_name, *parts[:-1]]:
            try:
                os.mkdir(part, 0o755, dir_fd=directory)
            except FileExistsError:
                pass
            inner = os.open(part, _DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = inner
        temporary = f".{parts[-1]}.partial"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary, dir_fd=directory)
        fd = os.open(
            temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=directory
        )
    except OSError as exc:
        raise StagingError(f"cannot stage {name!r}: {exc.strerror or exc}") from None
    return directory, fd, temporary


def finish_staged(directory: int, temporary: str, final: str) -> None:
    """The written file in its place, replacing one of that name."""
    try:
        os.replace(temporary, final, src_dir_fd=directory, dst_dir_fd=directory)
    finally:
        os.close(directory)


def take_staged(workdir: Path, run_name: str, run_dir: Path) -> None:
    """The run's staged files become its `fetches/`; what was staged for other runs goes."""
    root = workdir / STAGED_DIR_NAME
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(info.st_mode):
        root.unlink()
        return
    mine = root / run_name
    if mine.is_dir() and not mine.is_symlink():
        os.rename(mine, run_dir / FETCHES_DIR_NAME)
    for entry in os.scandir(root):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)
