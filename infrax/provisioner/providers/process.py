"""The `process` provider: a container is an agent process on 127.0.0.1 in its own work directory."""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from infrax.model import ContainerType
from infrax.private import open_private, open_private_append
from infrax.provisioner.providers.base import ContainerProvider, Endpoint, ProviderError
from infrax.provisioner.providers.task_users import TaskUsers

READY = "INFRAX-AGENT-READY "
log = logging.getLogger(__name__)


class ProcessProvider(ContainerProvider):
    kind = "process"

    def __init__(self, name: str, capacity: int | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__(name, capacity, options)
        self.root = Path(self.options.get("root", ".infrax/containers")).resolve()
        self.kill_grace = float(self.options.get("kill_grace", 5.0))
        self.start_timeout = float(self.options.get("start_timeout", 15.0))
        # Whom the agents, and so the task code, run as (task_users): where infrax is root, a user
        # of each container's own unless the configuration names another.
        self.users = TaskUsers(self.options)
        self.users.check_reachable(self.root)  # at start, not at each container's: say it once, and stop
        # The agent is standard library only: any Python 3.11+ the task user may execute.
        self.python = self.users.python(self.options.get("python"))
        self._agent_path: str | None = None
        # An agent nobody has spoken to for this long exits (a provisioner heartbeats its containers
        # every few seconds, and one that restarts adopts them: this only ends agents left for good).
        self.orphan_timeout = float(self.options.get("orphan_timeout", 120.0))
        # An agent that ends with this process (a worker's: nothing else could hand its runs on)
        # rather than outliving it to be adopted by the next (a provisioner's).
        self.stop_with_provider = bool(self.options.get("stop_with_provider", False))
        # Each agent as PID 1 of its own PID namespace (with its own /proc), where the host allows:
        # when the agent dies, however it dies, the kernel kills every process of its runs, also
        # those that left with setsid. "auto": where `unshare` works; true: required; false: never.
        self.pid_namespace = self.options.get("pid_namespace", "auto")
        self._unshare: list[str] | None = None
        self._probing = asyncio.Lock()
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._drainers: set[asyncio.Task[None]] = set()

    async def _namespace_prefix(self) -> list[str]:
        async with self._probing:  # the first creates come all at once: one probe, and all wait for it
            if self._unshare is None:
                prefix: list[str] = []
                if self.pid_namespace is not False and shutil.which("unshare"):
                    command = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc"]
                    probe = await asyncio.create_subprocess_exec(
                        *command, "true", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
                    )
                    if await probe.wait() == 0:
                        prefix = command
                if not prefix and self.pid_namespace is True:
                    raise ProviderError("pid_namespace is required, but `unshare --pid` does not work here")
                if not prefix:
                    log.warning(
                        "provider %s: no PID namespace per agent here (`unshare --pid` needs root); processes a "
                        "run leaves behind are killed when it ends, but survive an agent killed mid-run",
                        self.name,
                    )
                self._unshare = prefix
        return self._unshare

    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Endpoint:
        started = time.monotonic()
        home = self.root / container_id
        if self._agent_path is None:
            self.users.prepare_root(self.root)
            self._agent_path = self.users.agent_path(self.root)
        try:
            user = self.users.for_container(container_id)
            work = self.users.prepare_home(home, user)
        except OSError as error:
            raise ProviderError(f"cannot make the folder of container {container_id}: {error}") from error
        # Not this process's environment: it may hold a database URL or a broker's password.
        env = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL", "TZ") if k in os.environ}
        env["PYTHONPATH"] = self._agent_path
        try:
            # The child keeps its own copy of the log's descriptor; this process closes its own at once.
            with open_private_append(home / "agent.log") as agent_log:
                process = await asyncio.create_subprocess_exec(
                    *await self._namespace_prefix(),
                    *user.prefix(),
                    self.python,
                    "-m",
                    "infrax.agent",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--workdir",
                    str(work),
                    "--kill-grace",
                    str(self.kill_grace),
                    "--orphan-timeout",
                    str(self.orphan_timeout),
                    "--secret-stdin",
                    *(["--stop-on-stdin-close"] if self.stop_with_provider else []),
                    stdout=asyncio.subprocess.PIPE,
                    stderr=agent_log,
                    stdin=asyncio.subprocess.PIPE,
                    env=env,
                    start_new_session=True,
                    cwd=str(work),
                )
            # The secret goes on a pipe: never into an environment that /proc shows.
            assert process.stdin is not None
            process.stdin.write(secret.encode() + b"\n")
            await process.stdin.drain()
            if not self.stop_with_provider:  # else kept open: it closes when this process ends
                process.stdin.close()
        except (OSError, KeyError) as error:
            raise ProviderError(f"cannot start agent process: {error}") from error
        with open_private(home / "pid") as file:
            file.write(str(process.pid))
        self._processes[container_id] = process
        try:
            endpoint = await asyncio.wait_for(self._ready(process), self.start_timeout)
        except (TimeoutError, ProviderError) as error:
            await self.destroy(container_id)
            raise ProviderError(f"agent of container {container_id} did not start: {error or 'timed out'}") from error
        self.start_durations.append(time.monotonic() - started)
        self._drainers.add(asyncio.create_task(self._drain(process)))
        # What a provisioner after this one needs to adopt it (the secret it derives again).
        with open_private(home / "endpoint.json") as file:
            json.dump({"host": endpoint.host, "port": endpoint.port, "type": container_type.name}, file)
        return endpoint

    async def _ready(self, process: asyncio.subprocess.Process) -> Endpoint:
        assert process.stdout is not None
        while True:
            line = (await process.stdout.readline()).decode(errors="replace")
            if not line:
                raise ProviderError(f"agent exited with code {await process.wait()} before it was ready")
            if line.startswith(READY):
                info = json.loads(line[len(READY) :])
                return Endpoint(info["host"], int(info["port"]))

    async def _drain(self, process: asyncio.subprocess.Process) -> None:
        # Keep reading so the agent never blocks on a full stdout pipe.
        assert process.stdout is not None
        try:
            while await process.stdout.read(65536):
                pass
        finally:
            self._drainers.discard(asyncio.current_task())

    async def alive(self, container_id: str) -> bool:
        process = self._processes.get(container_id)
        if process is not None:
            return process.returncode is None
        pid = _read_pid(self.root / container_id)
        return pid is not None and _is_agent(pid)

    async def destroy(self, container_id: str) -> None:
        home = self.root / container_id
        process = self._processes.pop(container_id, None)
        pid = process.pid if process else _read_pid(home)
        if pid is not None and (process is not None or _is_agent(pid)):
            _signal_group(pid, signal.SIGTERM)
            # A stopped agent (one that stopped answering heartbeats) must wake up to see the TERM.
            _signal_group(pid, signal.SIGCONT)
            if process is not None:
                try:
                    await asyncio.wait_for(process.wait(), self.kill_grace + 2)
                except TimeoutError:
                    _signal_group(pid, signal.SIGKILL)
                    await process.wait()
            else:
                await asyncio.sleep(0.2)
                _signal_group(pid, signal.SIGKILL)
        await asyncio.to_thread(self.users.release, container_id, home)
        await asyncio.to_thread(shutil.rmtree, home, True)

    async def adoptable(self) -> builtins.list[tuple[str, str, Endpoint]]:
        found = []
        for container_id in await self.list():
            home = self.root / container_id
            pid = _read_pid(home)
            try:
                info = json.loads((home / "endpoint.json").read_text())
                endpoint = Endpoint(str(info["host"]), int(info["port"]))
                type_name = str(info["type"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if pid is not None and _is_agent(pid):
                self.users.adopt(container_id, home)
                found.append((container_id, type_name, endpoint))
        return found

    async def list(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    async def close(self) -> None:
        await asyncio.gather(*(self.destroy(cid) for cid in list(self._processes)), return_exceptions=True)


def agent_pid(home: Path) -> int | None:
    """The pid of the agent of the container in `home`: the child of `unshare` where the agent has a
    PID namespace of its own, else the container's process itself."""
    pid = _read_pid(home)
    if pid is None:
        return None
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"unshare"):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            return int(children[0]) if children else None
    except OSError:
        return None
    return pid


def _read_pid(home: Path) -> int | None:
    try:
        return int((home / "pid").read_text())
    except (OSError, ValueError):
        return None


def _is_agent(pid: int) -> bool:
    """Guards against signalling an unrelated process that reused a leaked agent's pid."""
    try:
        return b"infrax.agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
