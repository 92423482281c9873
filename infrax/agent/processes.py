"""This agent's processes: how a run's process ended, when it has, and what a run leaves behind
(its orphans killed, the zombies reaped, so a container's process slots are its next run's).

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

from infrax.agent.protocol import RunStatus

log = logging.getLogger(__name__)


def describe_exit(returncode: int | None) -> tuple[str, int | None, str]:
    """Map a process return code to (status, exitCode, message)."""
    if returncode is None:
        return RunStatus.ERROR, None, "process exit status unknown"
    if returncode == 0:
        return RunStatus.COMPLETED, 0, "exited with code 0"
    if returncode > 0:
        message = f"exited with code {returncode}"
        if returncode > 128 and (name := _signal_name(returncode - 128)) is not None:
            # Shells report a child killed by signal N as 128+N.
            hint = " (out of memory?)" if returncode - 128 == signal.SIGKILL else ""
            message += f" (a child process was probably killed by {name}{hint})"
        return RunStatus.FAILED, returncode, message
    signum = -returncode
    name = _signal_name(signum) or f"signal {signum}"
    if signum == signal.SIGKILL:
        # We did not send it (that would be a timeout/cancel): usually the OOM killer.
        return RunStatus.FAILED, 128 + signum, f"killed by {name} (out of memory?)"
    return RunStatus.FAILED, 128 + signum, f"killed by {name}"


def _signal_name(signum: int) -> str | None:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return None


async def until_exited(process: asyncio.subprocess.Process) -> None:
    """Until the process has exited (not necessarily reaped, nor its pipes closed)."""
    if process.returncode is not None:
        return
    try:
        descriptor = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        while process.returncode is None:  # noqa: ASYNC110 - no pidfd here: look every few milliseconds
            await asyncio.sleep(0.005)
        return
    loop = asyncio.get_running_loop()
    gone: asyncio.Future[None] = loop.create_future()

    def exited() -> None:
        if not gone.done():
            gone.set_result(None)

    loop.add_reader(descriptor, exited)
    try:
        await gone
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


def _zombie(pid: int) -> bool:
    """Exited (a zombie) or gone."""
    return (_stat_fields(pid) or [b"Z"])[0] == b"Z"


async def kill_leftovers(run_id: str, rounds: int = 50) -> int:
    """Kill every child of this agent: with the run's own process reaped, any child left is an
    orphan of the run (re-parented to us as the subreaper). Each one's process group goes too,
    and whatever those leave is orphaned to us in turn: repeated until none is left."""
    killed = 0
    own_group = os.getpgrp()
    for _ in range(rounds):
        # Not zombies: the run's own process, exited but not yet reaped, is asyncio's to collect.
        children = _children_of(os.getpid())
        if not children:
            break
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                group = os.getpgid(pid)
                if group != own_group:  # never the agent's own group (and whoever shares it)
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
            killed += 1
        await asyncio.sleep(0.01)
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG: it never blocks
    if killed:
        log.warning("run %s: killed %d processes it left behind", run_id, killed)
    return killed


def reap_orphans(keep: int) -> int:
    """Collect every exited child of this agent but `keep` (the run's own process, asyncio's to
    collect): orphans of the run re-parented to us, as the subreaper or PID 1 of the container, that
    no one else waits for. Left, they are zombies holding the container's process slots."""
    reaped = 0
    for pid in _children_of(os.getpid(), zombies=True):
        if pid == keep:
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped


def _children_of(parent: int, zombies: bool = False) -> list[int]:
    """Live children of `parent`: from /proc's children lists where the kernel keeps them (a few
    reads), else by scanning every process (milliseconds on a busy host)."""
    try:
        tasks = os.listdir(f"/proc/{parent}/task")
        listed: set[int] = set()
        for tid in tasks:
            with open(f"/proc/{parent}/task/{tid}/children") as handle:
                listed.update(int(pid) for pid in handle.read().split())
        return [pid for pid in listed if zombies or not _zombie(pid)]
    except (OSError, ValueError):
        pass
    try:
        entries = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    return [pid for pid in entries if _parent(pid) == parent and (zombies or not _zombie(pid))]


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (state, ppid, …); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    return stat[stat.rfind(b")") + 2 :].split()


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields and len(fields) > 1 else None


def killpg(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        # Group already empty (or, for PermissionError, taken over by a setuid
        # program we may not signal): nothing more we can do.
        pass
