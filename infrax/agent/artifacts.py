"""What a run leaves in `$INFRAX_ARTIFACTS_DIR`: listed when it ends, sent on request.

The directory is written by the task, which is somebody's pull request: nothing in it is
followed. A symbolic link (to `/etc/shadow`, to the agent's secret file, to another run) is not
an artifact, nor is a FIFO or a device; a file is opened one path component at a time under the
directory's own descriptor, each with `O_NOFOLLOW`, so no link anywhere on its path is taken,
also one swapped in after the listing.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path
from typing import Any, Final

# An exit message lists at most this many, in at most this many bytes of names (a line is at most
# 1 MiB, and file durations share it); the rest are counted.
MAX_LISTED: Final = 1000
REPORTS_DIR_NAME: Final = "reports"  # the run's JUnit reports, among its artifacts
MAX_LISTED_NAME_BYTES: Final = 256 * 1024
_DIRECTORY: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO the task left must not wait for a writer; it is refused after fstat.
_FILE: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


class NotAnArtifact(Exception):
    """The name is not a regular file the run left; the message says why."""


def listing(root: Path) -> tuple[list[dict[str, Any]], int]:
    """The regular files under `root`, by name (`reports/junit.xml`), with their sizes, at most
    MAX_LISTED of them; and how many more there were."""
    found: list[dict[str, Any]] = []
    seen, name_bytes = 0, 0
    if not root.is_dir() or root.is_symlink():
        return [], 0
    for directory, subdirectories, files in os.walk(root, followlinks=False):
        subdirectories.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            relative = os.path.relpath(path, root).replace(os.sep, "/")
            if not stat.S_ISREG(info.st_mode) or not _encodable(relative):
                continue
            seen += 1
            name_bytes += len(relative.encode())
            if len(found) < MAX_LISTED and name_bytes <= MAX_LISTED_NAME_BYTES:
                found.append({"name": relative, "size": info.st_size})
    return found, seen - len(found)


def open_artifact(root: Path, name: str) -> tuple[int, int]:
    """A descriptor of the regular file `name` under `root` and its size; no link is followed."""
    parts = name.split("/")
    if not name or any(part in ("", ".", "..") for part in parts):
        raise NotAnArtifact(f"{name!r} is not a plain relative path")
    try:
        directory = os.open(root, _DIRECTORY)
    except OSError as exc:
        raise NotAnArtifact(f"the run left no artifacts directory: {exc.strerror}") from None
    try:
        for part in parts[:-1]:
            inner = os.open(part, _DIRECTORY, dir_fd=directory)
            os.close(directory)
            directory = inner
        fd = os.open(parts[-1], _FILE, dir_fd=directory)
    except OSError as exc:
        raise NotAnArtifact(f"{name!r}: {exc.strerror}") from None
    finally:
        os.close(directory)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotAnArtifact(f"{name!r} is not a regular file")
    return fd, info.st_size


def _encodable(name: str) -> bool:
    try:
        name.encode("utf-8")  # os.walk turns bytes that are not UTF-8 into lone surrogates
    except UnicodeEncodeError:
        return False
    return "\n" not in name


def gather_reports(report_dir: Path, artifacts_dir: Path) -> int:
    """Move the JUnit files the run left in its report directory (`*.xml`, regular files at its top)
    among its artifacts as `reports/<name>`, where the executioner fetches and reads them; one the
    task already put there by that name stays. How many were moved."""
    moved = 0
    try:
        entries = sorted(os.scandir(report_dir), key=lambda e: e.name)
    except OSError:
        return 0
    target = artifacts_dir / REPORTS_DIR_NAME
    for entry in entries:
        if not entry.name.endswith(".xml") or not entry.is_file(follow_symlinks=False):
            continue
        if moved == 0:
            try:
                target.mkdir(exist_ok=True)
            except OSError:
                return 0
            if target.is_symlink() or not target.is_dir():  # the task's own link: not followed
                return 0
        destination = target / entry.name
        if destination.exists() or destination.is_symlink():
            continue
        with contextlib.suppress(OSError):
            os.rename(entry.path, destination)  # same file system: the link, not a copy
            moved += 1
    return moved
