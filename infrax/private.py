"""Folders and files only infrax's own user may read, whatever the umask it was started with.

The data directory holds the store (with the run-token key), the logs of every run and the admin
token: task code that could read any of it could forge run tokens and so reach every agent. So
infrax makes each folder 0700 and each file 0600 itself, and refuses to start on one that an
earlier start, an operator or a wide umask left readable by others (`InsecurePath` names it).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, TextIO

from infrax.config import ConfigError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


class InsecurePath(ConfigError):
    """An existing folder or file of infrax's is open to other users; the message says which."""


def _refuse_if_open(path: Path, info: os.stat_result) -> None:
    wide = stat.S_IMODE(info.st_mode) & 0o077
    if wide:
        kind = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        raise InsecurePath(
            f"{path} is a {kind} other users may read or write (mode {stat.S_IMODE(info.st_mode):o}): "
            f"it holds infrax's secrets; `chmod {'700' if kind == 'folder' else '600'} {path}` "
            "(and check what read it meanwhile), or remove it"
        )
    if info.st_uid != os.geteuid():
        raise InsecurePath(f"{path} belongs to uid {info.st_uid}, not to the user infrax runs as ({os.geteuid()})")


def private_dir(path: Path) -> Path:
    """`path` as a folder of infrax's own: made 0700 where missing (its missing parents too), refused
    where it exists open to others."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            pass  # another component made it at the same moment: checked below
        os.chmod(path, PRIVATE_DIR)  # mkdir's mode passes through the umask
        info = path.lstat()
    if stat.S_ISLNK(info.st_mode):
        info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise InsecurePath(f"{path} is not a folder")
    _refuse_if_open(path, info)
    return path


def private_file(path: Path) -> Path:
    """`path` as a file of infrax's own: made empty with 0600 where missing, refused where it exists
    open to others."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_FILE)
    except FileExistsError:
        _refuse_if_open(path, path.stat())
        return path
    os.fchmod(descriptor, PRIVATE_FILE)
    os.close(descriptor)
    return path


def check_private(path: Path) -> None:
    """Refuse an existing file or folder open to others; a missing one is fine."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return
    _refuse_if_open(path, info)


def open_private(path: Path) -> TextIO:
    """`path` opened for writing text from its start, created 0600 whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, PRIVATE_FILE)
    return os.fdopen(descriptor, "w", encoding="utf-8")


def open_private_append(path: Path) -> BinaryIO:
    """`path` opened for appending bytes, created 0600 whatever the umask."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE)
    return os.fdopen(descriptor, "ab")


def passable_temp_dir(prefix: str) -> Path:
    """A new temporary folder (mkdtemp) that other users may pass through but not list (0711): the
    root of a stack whose containers' task users must reach their own folders below it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path
