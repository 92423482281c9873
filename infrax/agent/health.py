"""Whether this container can still run a partition: what a run may have broken for the next one.

A run can leave its container unable to fork (a fork bomb filling `pids.max`), with a full disk
or at its memory limit. The agent looks before each run and after it: a problem found is reported
(the heartbeat's `problem`, the exit message's `unhealthy`), the container is retired, and a run
that met it is the infrastructure's failure, run again elsewhere, not charged to its task.
Standard library only, as all of the agent.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Final

MIN_FREE_BYTES: Final = 64 * 1024 * 1024
MEMORY_FULL: Final = 0.95  # of the container's memory limit, still in use with no run
_CGROUP: Final = Path("/sys/fs/cgroup")


def container_problem(workdir: Path, *, idle: bool, fork: bool = True, min_free: int = MIN_FREE_BYTES) -> str | None:
    """What keeps this container from running another partition; None when nothing does. `idle`:
    no run is going on, so memory in use is memory a run left behind. `fork`: try starting a
    process (a millisecond: only when a run may have broken it, not on every heartbeat)."""
    try:
        free = shutil.disk_usage(workdir).free
    except OSError as error:
        return f"cannot read its disk: {error.strerror or error}"
    if free < min_free:
        return f"out of disk: {free // 1024 // 1024} MiB free in {workdir}"
    if fork:
        try:
            child = os.posix_spawn("/bin/true", ["/bin/true"], {})
            os.waitpid(child, 0)
        except OSError as error:
            return f"cannot fork: {error.strerror or error}"
    if idle:
        used, limit = _cgroup_number("memory.current"), _cgroup_number("memory.max")
        if used is not None and limit is not None and used > MEMORY_FULL * limit:
            return f"out of memory: {used // 1024 // 1024} of {limit // 1024 // 1024} MiB in use with no run"
    return None


def _cgroup_number(name: str) -> int | None:
    try:
        text = (_CGROUP / name).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
