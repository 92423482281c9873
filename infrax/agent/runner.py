"""Running one bootstrapper process and recording its output.

A :class:`Run` owns the run directory, the bootstrapper process (and its process
group) and an :class:`OutputLog` that any number of connections can follow, so
a run survives its client disconnecting and can be re-attached.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import logging
import math
import os
import re
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Final

from infrax.agent.artifacts import gather_reports, listing
from infrax.agent.checkout import CHECKOUT_DIR_NAME, CheckoutError, check_out
from infrax.agent.health import MIN_FREE_BYTES, container_problem
from infrax.agent.output_log import OutputLog
from infrax.agent.processes import describe_exit, kill_leftovers, killpg, reap_orphans, until_exited
from infrax.agent.protocol import (
    AGENT_NAME,
    MAX_LINE_BYTES,
    MessageType,
    RunRequest,
    RunStatus,
    encode,
)
from infrax.agent.staging import FETCHES_DIR_NAME, take_staged
from infrax.agent.workspace import ARTIFACTS_DIR_NAME, BOOTSTRAPPER_NAME, FILES_LIST_NAME, REPORT_DIR_NAME, Workspace

__all__ = ["BootstrapError", "OutputLog", "Run", "RunSettings", "sanitize_run_id"]

log = logging.getLogger("infrax.agent")

READ_CHUNK: Final = 64 * 1024
FETCH_TIMEOUT: Final = 30.0
MAX_BOOTSTRAPPER_BYTES: Final = 64 * 1024 * 1024
MAX_DURATIONS_BYTES: Final = 16 * 1024 * 1024
# Processes that left the bootstrapper's process group (setsid, double fork) can
# keep the output pipes open forever; stop reading this long after the exit.
PIPE_DRAIN_TIMEOUT: Final = 2.0

DURATIONS_NAME: Final = "durations.json"
# Of the agent's own environment, only these reach a bootstrapper (docs/protocols/agent-v1.md).
PASSED_ON: Final = ("PATH", "LANG", "LC_ALL", "TZ")


class BootstrapError(Exception):
    """The bootstrapper could not be fetched or started; the message is shown to users.

    `infrastructure`: it failed because infrax's own server did not answer (or answered 5xx), not
    because of anything in the task: the exit message says so, and the run is tried again."""

    def __init__(self, message: str, infrastructure: bool = False) -> None:
        super().__init__(message)
        self.infrastructure = infrastructure


class RunSettings:
    """Agent-wide knobs that apply to every run."""

    def __init__(
        self,
        workdir: Path,
        kill_grace: float = 5.0,
        max_buffered_messages: int = 10_000,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        min_free_disk: int = MIN_FREE_BYTES,
    ) -> None:
        self.workdir = workdir
        self.min_free_disk = min_free_disk
        self.forks = True  # as the last look that tried found
        self.looked = False  # whether a run's end was looked at since the agent started
        self.kill_grace = kill_grace
        self.max_buffered_messages = max_buffered_messages
        self.max_buffered_bytes = max_buffered_bytes
        self.bootstrappers = LocalFileCache()
        self.workspace = Workspace(workdir)

    def problem(self, *, fork: bool) -> str | None:
        """What keeps this idle container from running a partition now (infrax.agent.health); what
        the last full look found stands until the next one (a container does not mend itself)."""
        found = container_problem(self.workdir, idle=True, fork=fork, min_free=self.min_free_disk)
        if fork:
            self.forks = found is None or not found.startswith("cannot fork")
        return found or (None if self.forks else "cannot fork (since the last run)")

    async def look(self, *, fork: bool) -> str | None:
        """`problem`, off the event loop only when it starts a process (the rest is a few syscalls)."""
        return await asyncio.to_thread(self.problem, fork=True) if fork else self.problem(fork=False)

    @property
    def runs_dir(self) -> Path:
        """Directory that holds the run directories."""
        return self.workspace.runs_dir


class LocalFileCache:
    """Local bootstrappers by path, read again only when the file changed.

    A container runs the same bootstrapper partition after partition; on a short partition,
    reading it in a worker thread every time cost more than the rest of the preparation.
    """

    def __init__(self) -> None:
        self._files: dict[str, tuple[tuple[int, int, int], bytes]] = {}

    def get(self, path: str, stamp: tuple[int, int, int] | None) -> bytes | None:
        cached = self._files.get(path)
        return cached[1] if cached is not None and stamp is not None and cached[0] == stamp else None

    def put(self, path: str, stamp: tuple[int, int, int] | None, content: bytes) -> None:
        if stamp is not None:
            self._files[path] = (stamp, content)


def _stamp(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def sanitize_run_id(run_id: str) -> str:
    """Turn a run ID into a safe single path component."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", run_id)[:100].lstrip(".")
    return name or "run"


def _format_seconds(value: float) -> str:
    return f"{value:g}"


def _redact(url: str) -> str:
    """Drop user:password@ from a URL so credentials never end up in messages or logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


class Run:
    """One execution of a bootstrapper, from fetching it to the ``exit`` message."""

    def __init__(self, request: RunRequest, settings: RunSettings) -> None:
        self.request = request
        self.settings = settings
        self.log = OutputLog(request.run_id, settings.max_buffered_messages, settings.max_buffered_bytes)
        self.directory = settings.runs_dir / sanitize_run_id(request.run_id)
        self.pid: int | None = None
        self._stop_reason: str | None = None
        self._stop_message = ""
        self._stop_requested = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._shebang = ""
        self.cwd = self.directory  # its checkout, when it has one
        self.checkout_seconds: float | None = None

    @property
    def run_id(self) -> str:
        """The client-chosen run ID."""
        return self.request.run_id

    @property
    def finished(self) -> bool:
        """True once the ``exit`` message exists."""
        return self.log.final is not None

    def start(self) -> asyncio.Task[None]:
        """Start executing in the background; the returned task never raises."""
        self._task = asyncio.create_task(self._execute(), name=f"run {self.run_id}")
        return self._task

    def cancel(self, message: str = "cancelled by client") -> bool:
        """Ask the run to stop; False if it had already finished."""
        if self.finished:
            return False
        if self._stop_reason is None:
            self._stop_reason = RunStatus.CANCELLED
            self._stop_message = message
        self._stop_requested.set()
        return True

    async def wait(self) -> dict[str, Any]:
        """Wait for the run to finish and return its ``exit`` message."""
        return await self.log.wait_finished()

    # -- execution -----------------------------------------------------------

    async def _execute(self) -> None:
        started = time.monotonic()
        extra: dict[str, Any] = {}
        try:
            # The first run looks at the container whole; each later one was looked at after the last run.
            before = await self.settings.look(fork=not self.settings.looked)
            if before is not None:  # what an earlier run broke: not this run's to answer for
                raise BootstrapError(f"the container cannot run it: {before}", infrastructure=True)
            status, exit_code, message = await self._run(started + self.request.max_run_time)
            durations = self._read_durations()
            if durations is not None:
                extra["fileDurations"] = durations
            await self._gather_reports()
            extra.update(await self._artifacts())
            if self.checkout_seconds is not None:
                extra["checkoutSeconds"] = round(self.checkout_seconds, 3)
        except BootstrapError as exc:
            status, exit_code, message = RunStatus.ERROR, None, str(exc)
            if exc.infrastructure:
                extra["infrastructure"] = True
        except Exception as exc:  # the exit message must always be sent
            log.exception("run %s failed inside the agent", self.run_id)
            status, exit_code, message = RunStatus.ERROR, None, f"internal agent error: {exc!r}"
        # Its processes are gone: whatever is still wrong, the next run would meet. A run that
        # completed forked all it wanted and left nothing running: only another is tried at forking.
        problem = await self.settings.look(fork=status != RunStatus.COMPLETED)
        self.settings.looked = True
        if problem is not None:
            extra["unhealthy"] = problem
            if status != RunStatus.COMPLETED:  # a failure in a broken container may be the container's
                extra["infrastructure"] = True
                message = f"{message} (the container is broken: {problem})"
        exit_message: dict[str, Any] = {
            "type": MessageType.EXIT,
            "runId": self.run_id,
            "status": status,
            "exitCode": exit_code,
            "message": message,
            "duration": round(time.monotonic() - started, 6),
            **extra,
        }
        if "fileDurations" in exit_message and len(encode(exit_message)) > MAX_LINE_BYTES:
            del exit_message["fileDurations"]
            exit_message["message"] += f" (fileDurations dropped: exit message would exceed {MAX_LINE_BYTES} bytes)"
        log.info("run %s: %s (%s)", self.run_id, status, exit_message["message"])
        self.log.finish(exit_message)

    def _remaining(self, deadline: float) -> float:
        return max(0.0, deadline - time.monotonic())

    def _stopped_result(self, process_started: bool) -> tuple[str, int | None, str]:
        if self._stop_reason == RunStatus.CANCELLED:
            return RunStatus.CANCELLED, None, self._stop_message
        tree = "; process tree killed" if process_started else " before the bootstrapper started"
        return (
            RunStatus.TIMEOUT,
            None,
            f"exceeded maxRunTime of {_format_seconds(self.request.max_run_time)}s{tree}",
        )

    async def _run(self, deadline: float) -> tuple[str, int | None, str]:
        stop_wait = asyncio.create_task(self._stop_requested.wait())
        try:
            prepare = asyncio.create_task(self._prepare())
            done, _ = await asyncio.wait(
                {prepare, stop_wait}, timeout=self._remaining(deadline), return_when=asyncio.FIRST_COMPLETED
            )
            if prepare not in done:
                prepare.cancel()
                return self._stopped_result(process_started=False)
            argv, env = prepare.result()

            try:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=self.cwd,
                    env=env,
                    # Own process group: lets us signal the whole tree at once.
                    start_new_session=True,
                    limit=READ_CHUNK,
                )
            except OSError as exc:
                # With a shebang, ENOENT almost always means the interpreter is missing.
                via = f" (via {argv[0]!r})" if argv[0] == "/bin/sh" else f" (interpreter line {self._shebang!r})"
                raise BootstrapError(
                    f"could not execute bootstrapper {_redact(self.request.bootstrapper)}{via}: {exc.strerror or exc}"
                ) from None
            return await self._supervise(process, stop_wait, deadline)
        finally:
            stop_wait.cancel()

    async def _supervise(
        self, process: asyncio.subprocess.Process, stop_wait: asyncio.Task[Any], deadline: float
    ) -> tuple[str, int | None, str]:
        self.pid = process.pid
        self.log.set_started(process.pid)
        assert process.stdout is not None and process.stderr is not None
        readers = [
            asyncio.create_task(self._pump(process.stdout, "stdout")),
            asyncio.create_task(self._pump(process.stderr, "stderr")),
        ]
        exited = asyncio.create_task(self._exit_of(process))
        try:
            done, _ = await asyncio.wait(
                {exited, stop_wait}, timeout=self._remaining(deadline), return_when=asyncio.FIRST_COMPLETED
            )
            stopped = exited not in done
            if stopped:
                if self._stop_reason is None:
                    self._stop_reason = RunStatus.TIMEOUT
                await self._kill_tree(process.pid, exited)
            await exited
        finally:
            # Also on success: background children of the bootstrapper must not
            # outlive the run (they would leak into the next one).
            killpg(process.pid, signal.SIGKILL)
            if not exited.done():
                # Only when we are being cancelled; reap in the background.
                exited.cancel()
        _, pending = await asyncio.wait(readers, timeout=PIPE_DRAIN_TIMEOUT)
        for reader in pending:
            reader.cancel()

        if stopped:
            return self._stopped_result(process_started=True)
        return describe_exit(process.returncode)

    async def _exit_of(self, process: asyncio.subprocess.Process) -> int:
        """The bootstrapper's exit status, once it and every process it left behind are gone.

        `process.wait()` alone also waits for the output pipes to close, which a process that left
        with setsid keeps open: its exit is seen on its own, then the leftovers (orphaned to us,
        the subreaper) are killed, which closes the pipes."""
        await until_exited(process)
        await kill_leftovers(self.run_id)
        reap_orphans(keep=process.pid)
        return await process.wait()

    async def _kill_tree(self, pgid: int, exited: asyncio.Task[Any]) -> None:
        """SIGTERM the process group, then SIGKILL it after the grace period."""
        log.info("run %s: stopping process group %d (%s)", self.run_id, pgid, self._stop_reason)
        killpg(pgid, signal.SIGTERM)
        await asyncio.wait({exited}, timeout=self.settings.kill_grace)
        killpg(pgid, signal.SIGKILL)

    async def _pump(self, stream: asyncio.StreamReader, name: str) -> None:
        # Incremental decoding keeps multi-byte characters that straddle two
        # reads intact instead of turning both halves into U+FFFD.
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        while True:
            chunk = await stream.read(READ_CHUNK)
            if not chunk:
                self.log.append(name, decoder.decode(b"", final=True))
                return
            self.log.append(name, decoder.decode(chunk))

    # -- preparation ---------------------------------------------------------

    async def _prepare(self) -> tuple[list[str], dict[str, str]]:
        """Create the run directory and fetch the bootstrapper; returns argv and environment."""
        content = await self._fetch_bootstrapper()
        path = self.directory / BOOTSTRAPPER_NAME
        try:
            # A few small local writes: cheaper here than a trip to a worker thread, which was most
            # of a short run's cost. Removing old checkouts, which can be large, happens elsewhere.
            self.settings.workspace.prepare(self.directory.name, content, list(self.request.files))
            take_staged(self.settings.workdir, self.directory.name, self.directory)
        except OSError as exc:
            raise BootstrapError(f"could not create run directory {self.directory}: {exc}") from None
        if self.request.checkout is not None:
            try:
                self.checkout_seconds = await asyncio.to_thread(
                    check_out,
                    self.settings.workdir,
                    self.request.checkout,
                    self.directory,
                    self.directory / FETCHES_DIR_NAME,
                )
            except (CheckoutError, OSError) as exc:
                # infrax's source did not arrive whole, or the image lacks git: not the task's doing.
                raise BootstrapError(f"checkout of {self.request.checkout['revision'][:12]}: {exc}", True) from None
            self.cwd = self.directory / CHECKOUT_DIR_NAME
        # Without a shebang execve() fails with ENOEXEC; run such scripts with sh
        # the way a shell would.
        if content.startswith(b"#!"):
            self._shebang = content.split(b"\n", 1)[0][:200].decode("utf-8", "replace").strip()
            argv = [str(path)]
        else:
            argv = ["/bin/sh", str(path)]
        argv += [*self.request.arguments, *self.request.files]

        # Only what the task defines and the documented run variables: never the host's environment
        # (which may hold a database URL, a broker password, a token).
        env = {name: os.environ[name] for name in PASSED_ON if name in os.environ}
        env["HOME"] = str(self.directory)
        env.update(self.request.env)
        env.update(
            INFRAX_RUN_ID=self.run_id,
            INFRAX_WORK_DIR=str(self.directory),
            INFRAX_FILES_LIST=str(self.directory / FILES_LIST_NAME),
            INFRAX_REPORT_DIR=str(self.directory / REPORT_DIR_NAME),
            INFRAX_ARTIFACTS_DIR=str(self.artifacts_dir),
            INFRAX_FETCHES_DIR=str(self.directory / FETCHES_DIR_NAME),
            INFRAX_CHECKOUT_DIR=str(self.directory / CHECKOUT_DIR_NAME),
        )
        return argv, env

    async def _fetch_bootstrapper(self) -> bytes:
        if self.request.bootstrapper_content is not None:
            return self.request.bootstrapper_content
        source = self.request.bootstrapper
        if source.startswith(("http://", "https://")):
            return await asyncio.to_thread(_fetch_url, source, self.request.bootstrapper_token)
        if source.startswith("file://"):
            parts = urllib.parse.urlsplit(source)
            if parts.netloc not in ("", "localhost"):
                raise BootstrapError(f"bootstrapper {source}: file:// URLs must not name a remote host")
            return await self._read_local(urllib.request.url2pathname(parts.path))
        return await self._read_local(source)

    async def _read_local(self, path: str) -> bytes:
        cache = self.settings.bootstrappers
        stamp = _stamp(path)
        content = cache.get(path, stamp)
        if content is None:
            content = await asyncio.to_thread(_read_file, path)
            cache.put(path, stamp, content)
        return content

    @property
    def artifacts_dir(self) -> Path:
        return self.directory / ARTIFACTS_DIR_NAME

    async def _gather_reports(self) -> None:
        """The run's JUnit files among its artifacts (`reports/`), where the executioner reads them."""
        report_dir = self.directory / REPORT_DIR_NAME
        try:
            if not any(name.endswith(".xml") for name in os.listdir(report_dir)):
                return  # the usual case, and no trip to a thread for it
        except OSError:
            return
        await asyncio.to_thread(gather_reports, report_dir, self.artifacts_dir)

    async def _artifacts(self) -> dict[str, Any]:
        """What the run left to keep, for the exit message (which the executioner fetches it by)."""
        try:
            with os.scandir(self.artifacts_dir) as entries:
                if next(entries, None) is None:
                    return {}  # the usual case, and no trip to a thread for it
        except OSError:
            return {}
        found, omitted = await asyncio.to_thread(listing, self.artifacts_dir)
        return {"artifacts": found, **({"artifactsOmitted": omitted} if omitted else {})}

    def _read_durations(self) -> dict[str, float] | None:
        """Read the optional ``durations.json`` a bootstrapper left in the report directory."""
        path = self.directory / REPORT_DIR_NAME / DURATIONS_NAME
        try:
            with path.open("rb") as handle:
                raw = handle.read(MAX_DURATIONS_BYTES + 1)
        except OSError:
            return None
        if len(raw) > MAX_DURATIONS_BYTES:
            log.warning("run %s: ignoring %s larger than %d bytes", self.run_id, path, MAX_DURATIONS_BYTES)
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            log.warning("run %s: ignoring invalid %s: %s", self.run_id, path, exc)
            return None
        if not isinstance(data, dict):
            log.warning("run %s: ignoring %s: not a JSON object", self.run_id, path)
            return None
        durations: dict[str, float] = {}
        for name, seconds in data.items():
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not math.isfinite(seconds):
                continue
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                continue
            durations[name] = float(seconds)
        return durations


def _fetch_url(url: str, token: str | None = None) -> bytes:
    shown = _redact(url)
    request = urllib.request.Request(url, headers={"User-Agent": AGENT_NAME})
    if token:
        # Unredirected: a redirect to another host never carries the run's token there.
        request.add_unredirected_header("Authorization", f"Bearer {token}")
    # Fetched with a run token, it is infrax's own server (the job master): its being away is
    # not the task's failure. Any other host's is the task's own business.
    ours = token is not None
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT) as response:
            content: bytes = response.read(MAX_BOOTSTRAPPER_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise BootstrapError(
            f"bootstrapper {shown} answered HTTP {exc.code} {exc.reason}", ours and (exc.code >= 500 or exc.code == 429)
        ) from None
    except urllib.error.URLError as exc:
        raise BootstrapError(f"bootstrapper {shown} could not be fetched: {exc.reason}", ours) from None
    except TimeoutError:
        raise BootstrapError(
            f"bootstrapper {shown} could not be fetched: timed out after {FETCH_TIMEOUT:g}s", ours
        ) from None
    except OSError as exc:
        raise BootstrapError(f"bootstrapper {shown} could not be fetched: {exc}", ours) from None
    if len(content) > MAX_BOOTSTRAPPER_BYTES:
        raise BootstrapError(f"bootstrapper {shown} is larger than {MAX_BOOTSTRAPPER_BYTES} bytes")
    return content


def _read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            content = handle.read(MAX_BOOTSTRAPPER_BYTES + 1)
    except FileNotFoundError:
        raise BootstrapError(f"bootstrapper {path} not found") from None
    except IsADirectoryError:
        raise BootstrapError(f"bootstrapper {path} is a directory") from None
    except PermissionError:
        raise BootstrapError(f"bootstrapper {path} is not readable (permission denied)") from None
    except OSError as exc:
        raise BootstrapError(f"bootstrapper {path} could not be read: {exc.strerror or exc}") from None
    if len(content) > MAX_BOOTSTRAPPER_BYTES:
        raise BootstrapError(f"bootstrapper {path} is larger than {MAX_BOOTSTRAPPER_BYTES} bytes")
    return content
