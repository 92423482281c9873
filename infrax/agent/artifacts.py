"""What a run leaves in `$INFRAX_ARTIFACTS_DIR`: listed when it ends, sent on request.

The directory is written by the task, which is somebody's pull request: nothing in it is
followed. A symbolic link (to `/etc/shadow`, to the agent's secret file, to another run) is not
an artifact, nor is a FIFO or a device; a file is opened one path component at a time under the
directory's own descriptor, each with `O_NOFOLLOW`, so no link anywhere on its path is taken,
also one swapped in after the listing.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Final

# An exit message lists at most this many, in at most this many bytes of names (a line is at most
# 1 MiB, and file durations share it); the rest are counted.
MAX_LISTED: Final = 1000
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
