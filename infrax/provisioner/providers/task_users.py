"""Whom a `process` container's agent, and so its task code, runs as.

`run_as` (a provider option) says it:

- `container` (the default where infrax runs as root): a user id of the container's own, from
  `uid_range` and with no entry in /etc/passwd, as systemd's dynamic users. Task code of one
  container can then neither signal, trace nor read the files of another's (another project's,
  another trust level's), nor anything of root's: the data directory, the store, the logs.
- a user name (e.g. `nobody`): every container as that user; containers can reach each other.
- `self`: the user infrax runs as. Where that is root, task code is root on this host: it must be
  asked for by name, never a default.

Where infrax is not root it cannot switch users: `self` is then the default and the only choice
(docs/security.md says what task code reaches then).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infrax.private import open_private
from infrax.provisioner.providers.base import ProviderError

DEFAULT_UID_RANGE = (1_900_000_000, 65_536)  # systemd leaves 1879048192–2147483647 unused
_PACKAGE_DIR = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class TaskUser:
    """A uid and gid to drop to; None: stay infrax's own user."""

    uid: int | None
    gid: int | None

    def prefix(self) -> list[str]:
        """The command prefix that drops to this user: its uid and gid, no other groups, and no way
        back up through a setuid program. setpriv, not Popen's `user=`: uvloop takes no such arguments."""
        if self.uid is None:
            return []
        return [
            "setpriv",
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--no-new-privs",
            "--",
        ]


class TaskUsers:
    """The users a provider's containers run as, one per container with `run_as: container`."""

    def __init__(self, options: dict[str, Any]) -> None:
        root = os.geteuid() == 0
        self.mode: str = str(options.get("run_as") or ("container" if root else "self"))
        if self.mode != "self" and not root:
            raise ProviderError(
                f"run_as: {self.mode} needs infrax to run as root (it cannot switch users otherwise); "
                "use run_as: self, or run infrax as root"
            )
        start, count = options.get("uid_range") or DEFAULT_UID_RANGE
        self.uid_range = range(int(start), int(start) + int(count))
        self._named: TaskUser | None = None
        if self.mode not in ("self", "container"):
            try:
                entry = pwd.getpwnam(self.mode)
            except KeyError as error:
                raise ProviderError(f"run_as: no user {self.mode!r} on this host") from error
            self._named = TaskUser(entry.pw_uid, entry.pw_gid)
        self._taken: dict[str, int] = {}  # container id -> its uid (run_as: container)

    @property
    def drops(self) -> bool:
        """Whether task code runs as another user than infrax's own."""
        return self.mode != "self" and os.geteuid() == 0

    def for_container(self, container_id: str) -> TaskUser:
        """The user of a new container."""
        if self.mode == "self":
            return TaskUser(None, None)
        if self._named is not None:
            return self._named
        uid = next((u for u in self.uid_range if u not in self._taken.values()), None)
        if uid is None:
            raise ProviderError(f"every uid of uid_range ({len(self.uid_range)}) is taken by a live container")
        self._taken[container_id] = uid
        return TaskUser(uid, uid)

    def adopt(self, container_id: str, home: Path) -> None:
        """A container a previous provisioner left: its uid stays taken."""
        try:
            uid = int((home / "uid").read_text())
        except (OSError, ValueError):
            return
        if uid in self.uid_range:
            self._taken[container_id] = uid

    def release(self, container_id: str, home: Path) -> None:
        """The container is gone: no process of its uid may outlive it (a uid's next container must
        not meet what the last one left running)."""
        uid = self._taken.pop(container_id, None)
        if uid is None:
            try:
                uid = int((home / "uid").read_text())
            except (OSError, ValueError):
                return
        if uid in self.uid_range:
            kill_every_process_of(uid)

    def python(self, configured: str | None) -> str:
        """An interpreter the task user may run: the configured one, this one where every folder on
        its way is open to others, else the system's."""
        if configured:
            return configured
        if not self.drops or _open_to_others(Path(sys.executable)):
            return sys.executable
        for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
            if _open_to_others(Path(candidate)):
                return candidate
        raise ProviderError("no Python the task user may run: set the provider's `python` option")

    def agent_path(self, root: Path) -> str:
        """The PYTHONPATH that gives the task user the agent: the package where others may read it,
        else a copy of the agent (standard library only) under the containers' root."""
        if not self.drops or _open_to_others(_PACKAGE_DIR / "agent" / "__init__.py"):
            return str(_PACKAGE_DIR.parent)
        copy = root / ".agent"
        package = copy / "infrax"
        if package.exists():
            shutil.rmtree(package)
        (package / "agent").mkdir(parents=True)
        shutil.copy2(_PACKAGE_DIR / "__init__.py", package / "__init__.py")
        for source in (_PACKAGE_DIR / "agent").glob("*.py"):
            shutil.copy2(source, package / "agent" / source.name)
        for path in (copy, package, package / "agent", *package.rglob("*.py")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        return str(copy)

    def check_reachable(self, root: Path) -> None:
        """Refuse a containers' folder the task users could not reach: every folder above it that
        exists must let others pass through."""
        if not self.drops:
            return
        for folder in root.resolve().parents:
            try:
                closed = not folder.stat().st_mode & stat.S_IXOTH
            except FileNotFoundError:
                continue  # made when the first container starts, with the umask's mode
            if closed:
                raise ProviderError(
                    f"the task users cannot reach the containers' folder {root}: {folder} is closed to others "
                    "(chmod o+x it, or set containers_dir to a folder under one they may pass through)"
                )

    def prepare_root(self, root: Path) -> None:
        """The containers' root: others may pass through it to their own folder, not list it."""
        self.check_reachable(root)
        root.mkdir(parents=True, exist_ok=True)
        for made in (root, *root.parents):
            if made.stat().st_uid == os.geteuid() and made.stat().st_mode & stat.S_IXOTH == 0:
                made.chmod(made.stat().st_mode | 0o011)  # a folder just made under a closed umask
        root.chmod(0o711 if self.drops else 0o700)

    def prepare_home(self, home: Path, user: TaskUser) -> Path:
        """A container's folder (infrax's: its pid, its agent's log) and its `work` folder, the task
        user's alone."""
        home.mkdir(mode=0o700, exist_ok=True)
        home.chmod(0o711 if user.uid is not None else 0o700)
        if user.uid is not None and self._named is None:  # for a provisioner after this one
            with open_private(home / "uid") as file:
                file.write(str(user.uid))
        work = home / "work"
        work.mkdir(mode=0o700, exist_ok=True)
        work.chmod(0o700)
        if user.uid is not None:
            os.chown(work, user.uid, user.gid if user.gid is not None else -1)
        return work


def _open_to_others(path: Path) -> bool:
    """Whether a user with no groups of ours may read (and run) `path`, following its links."""
    try:
        resolved = path.resolve(strict=True)
        for folder in resolved.parents:
            if not folder.stat().st_mode & stat.S_IXOTH:
                return False
        return bool(resolved.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def kill_every_process_of(uid: int) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            # The status, not the folder's owner: a non-dumpable process's folder is root's.
            line = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("Uid:"))
            if uid in {int(u) for u in line.split()[1:]}:
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ValueError, StopIteration):
            continue
