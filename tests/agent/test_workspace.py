"""Run directories: each run finds exactly its bootstrapper, files.txt and an empty report/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from infrax.agent.workspace import Workspace

BOOT = b"#!/bin/sh\nexit 0\n"


def contents(directory: Path) -> dict[str, bytes | None]:
    return {p.name: (p.read_bytes() if p.is_file() else None) for p in directory.iterdir()}


@contextmanager
def held(directory: Path) -> Iterator[os.stat_result]:
    """The directory's identity, kept alive: while a descriptor is open the filesystem cannot hand
    its inode number to a new directory, so comparing it with another one's is meaningful."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield os.fstat(fd)
    finally:
        os.close(fd)


def wait_trash_empty(workspace: Workspace) -> None:
    deadline = time.monotonic() + 10
    while workspace.trash.directory.exists() and any(workspace.trash.directory.iterdir()):
        assert time.monotonic() < deadline, "the trash was never emptied"
        time.sleep(0.01)


def test_each_run_gets_exactly_its_four_entries(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.prepare("run-1", BOOT, ["a", "b"])
    assert contents(first) == {"bootstrapper": BOOT, "files.txt": b"a\nb\n", "report": None, "artifacts": None}
    assert os.stat(first / "bootstrapper").st_mode & 0o7777 == 0o755

    second = workspace.prepare("run-2", b"#!/bin/sh\necho other\n", ["c"])
    assert not first.exists()
    assert [p.name for p in workspace.runs_dir.iterdir()] == ["run-2"]
    assert contents(second) == {
        "bootstrapper": b"#!/bin/sh\necho other\n",
        "files.txt": b"c\n",
        "report": None,
        "artifacts": None,
    }
    assert os.stat(second / "bootstrapper").st_mode & 0o7777 == 0o755


def test_a_directory_left_as_it_was_is_handed_on_without_the_trash(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.prepare("run-1", BOOT, ["a"])
    with held(first) as identity:
        second = workspace.prepare("run-2", BOOT, ["b"])
        assert os.path.samestat(second.stat(), identity)  # renamed, not made anew
    assert contents(second) == {"bootstrapper": BOOT, "files.txt": b"b\n", "report": None, "artifacts": None}
    assert not workspace.trash.directory.exists() or not any(workspace.trash.directory.iterdir())


@pytest.mark.parametrize(
    "change",
    [
        "added file",
        "report written",
        "artifact left",
        "files.txt now a symlink",
        "report removed",
        "bootstrapper now a symlink",
    ],
)
def test_a_directory_a_run_added_to_or_replaced_in_is_never_handed_on(tmp_path: Path, change: str) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.prepare("run-1", BOOT, ["a"])
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")
    if change == "added file":
        (first / "checkout.tar").write_bytes(b"x" * 100)
    elif change == "report written":
        (first / "report" / "durations.json").write_text("{}")
    elif change == "artifact left":
        (first / "artifacts" / "junit.xml").write_text("<testsuite/>")
    elif change == "bootstrapper now a symlink":
        (first / "bootstrapper").unlink()
        (first / "bootstrapper").symlink_to(outside)
    elif change == "files.txt now a symlink":
        (first / "files.txt").unlink()
        (first / "files.txt").symlink_to(outside)
    elif change == "report removed":
        (first / "report").rmdir()
    # A mark the workspace never looks at nor sets: a directory handed on would still carry it.
    first.chmod(0o701)

    with held(first) as identity:
        second = workspace.prepare("run-2", BOOT, ["a"])
        assert not os.path.samestat(second.stat(), identity)
    assert second.stat().st_mode & 0o777 != 0o701, "the first run's directory was handed on"
    assert contents(second) == {"bootstrapper": BOOT, "files.txt": b"a\n", "report": None, "artifacts": None}
    assert outside.read_text() == "keep me\n"
    wait_trash_empty(workspace)
    assert not first.exists()


def test_leftovers_of_an_earlier_agent_are_cleared(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    (runs / "old-run" / "deep").mkdir(parents=True)
    (runs / "stray-file").write_text("x")
    workspace = Workspace(tmp_path)
    directory = workspace.prepare("run-1", BOOT, [])
    assert sorted(p.name for p in runs.iterdir()) == ["run-1"]
    assert contents(directory) == {"bootstrapper": BOOT, "files.txt": b"", "report": None, "artifacts": None}
    wait_trash_empty(workspace)


def test_the_same_run_again_gets_its_directory_back_clean(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.prepare("run-1", BOOT, ["a"])
    (first / "left-behind").write_text("x")
    again = workspace.prepare("run-1", BOOT, ["a"])
    assert contents(again) == {"bootstrapper": BOOT, "files.txt": b"a\n", "report": None, "artifacts": None}


@pytest.mark.parametrize("change", ["rewritten, same size", "mode changed", "files.txt edited", "files.txt longer"])
def test_a_handed_on_directory_gets_its_files_written_again_where_they_differ(tmp_path: Path, change: str) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.prepare("run-1", BOOT, ["a"])
    identity_fd = os.open(first, os.O_RDONLY | os.O_DIRECTORY)
    identity = os.fstat(identity_fd)
    if change == "rewritten, same size":  # likely within the same clock tick: no timestamp would tell
        (first / "bootstrapper").write_bytes(BOOT.replace(b"0", b"1"))
    elif change == "mode changed":
        (first / "bootstrapper").chmod(0o700)
    elif change == "files.txt edited":
        (first / "files.txt").write_text("z\n")
    else:
        (first / "files.txt").write_text("a much longer list\nof files\n")
    second = workspace.prepare("run-2", BOOT, ["a"])
    try:
        assert os.path.samestat(second.stat(), identity)
    finally:
        os.close(identity_fd)
    assert contents(second) == {"bootstrapper": BOOT, "files.txt": b"a\n", "report": None, "artifacts": None}
    assert os.stat(second / "bootstrapper").st_mode & 0o7777 == 0o755
