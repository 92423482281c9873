"""Command line entry point: ``python3 -m infrax.agent --port 0 --workdir DIR``.

The shared secret is read from standard input (``--secret-stdin``: its first line) or from a
file that is removed once read (``--secret-file``); the ``INFRAX_AGENT_SECRET`` variable still
works, but leaves the secret in ``/proc/<pid>/environ``. Never from the command line, where
``ps`` would show it. The agent then makes itself non-dumpable, so processes of the same user
(the bootstrappers it runs, other containers' tasks) cannot read its memory or environment.
Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from infrax.agent.health import MIN_FREE_BYTES
from infrax.agent.runner import RunSettings
from infrax.agent.server import serve

SECRET_ENV = "INFRAX_AGENT_SECRET"
EXIT_USAGE = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the agent's command line."""
    parser = argparse.ArgumentParser(
        prog="python3 -m infrax.agent",
        description=f"infrax agent: runs bootstrappers on request. The secret is read from ${SECRET_ENV}.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--workdir", type=Path, required=True, help="directory for run directories")
    parser.add_argument(
        "--kill-grace",
        type=float,
        default=5.0,
        help="seconds between SIGTERM and SIGKILL when stopping a run (default: %(default)s)",
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        default=None,
        help="exit (killing the current run) when this process disappears",
    )
    parser.add_argument(
        "--orphan-timeout",
        type=float,
        default=0.0,
        help="exit once idle and unspoken to for this many seconds: nobody looks after this agent any more "
        "(0: never; default: %(default)s)",
    )
    parser.add_argument(
        "--max-buffered-messages",
        type=int,
        default=10_000,
        help="output messages kept per run for attach (default: %(default)s)",
    )
    parser.add_argument(
        "--min-free-disk",
        type=int,
        default=None,
        help="bytes free in the work folder below which the container counts as broken (default: 64 MiB)",
    )
    parser.add_argument("--log-level", default="INFO", help="stderr log level (default: %(default)s)")
    parser.add_argument("--secret-stdin", action="store_true", help="read the secret from standard input's first line")
    parser.add_argument(
        "--stop-on-stdin-close",
        action="store_true",
        help="with --secret-stdin: exit (killing the current run) when standard input closes, i.e. when the "
        "process that started this agent is gone, however it went",
    )
    parser.add_argument("--secret-file", type=Path, default=None, help="read the secret from this file, then remove it")
    args = parser.parse_args(argv)
    if args.kill_grace < 0:
        parser.error("--kill-grace must not be negative")
    if args.orphan_timeout < 0:
        parser.error("--orphan-timeout must not be negative")
    if args.max_buffered_messages < 1:
        parser.error("--max-buffered-messages must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the agent; returns the process exit code."""
    args = parse_args(argv)
    _not_dumpable()
    _become_subreaper()
    try:
        secret = _read_secret(args)
    except OSError as exc:
        print(f"infrax-agent: cannot read the secret: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not secret:
        print(
            f"infrax-agent: no secret (--secret-stdin, --secret-file or {SECRET_ENV}); "
            "refusing to start without a shared secret",
            file=sys.stderr,
        )
        return EXIT_USAGE

    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s infrax-agent %(levelname)s %(message)s",
    )
    workdir = args.workdir.resolve()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"infrax-agent: cannot create workdir {workdir}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    settings = RunSettings(
        workdir,
        kill_grace=args.kill_grace,
        max_buffered_messages=args.max_buffered_messages,
        min_free_disk=args.min_free_disk if args.min_free_disk is not None else MIN_FREE_BYTES,
    )
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    _use_pidfd_child_watcher(loop)
    # Not asyncio.run(): it would wait for worker threads on the way out (see below).
    return loop.run_until_complete(
        serve(
            secret,
            settings,
            args.host,
            args.port,
            args.parent_pid,
            orphan_timeout=args.orphan_timeout,
            lifeline=getattr(args, "lifeline", None),
        )
    )


def _read_secret(args: argparse.Namespace) -> str:
    # Removed from our environment in any case, so bootstrappers, which inherit it, never see it.
    from_env = os.environ.pop(SECRET_ENV, "")
    if args.secret_stdin:
        line = sys.stdin.readline().strip()
        if args.stop_on_stdin_close:  # kept (not inherited by runs) to hear the starter's end
            args.lifeline = os.dup(0)
        # Standard input was only for this: runs get /dev/null.
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        return line
    if args.secret_file is not None:
        secret = args.secret_file.read_text().strip()
        args.secret_file.unlink()
        return secret
    return from_env


def _become_subreaper() -> None:
    """PR_SET_CHILD_SUBREAPER: a run's processes that leave its process group and lose their parent
    (setsid, a double fork) become the agent's children instead of init's, so that the agent finds
    and kills them when the run ends. Linux only; elsewhere nothing happens."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass


def _not_dumpable() -> None:
    """PR_SET_DUMPABLE 0: /proc/<pid>/mem, environ and ptrace become root's alone (and without
    CAP_SYS_PTRACE, as in a container, nobody's). Linux only; elsewhere nothing happens."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def _use_pidfd_child_watcher(loop: asyncio.AbstractEventLoop) -> None:
    """Python 3.11 waits for each child in a thread of its own; a pidfd costs far less per run."""
    if sys.version_info >= (3, 12) or not hasattr(os, "pidfd_open"):
        return  # 3.12 picks the pidfd watcher by itself where it can
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:
        return  # the kernel or a seccomp profile refuses pidfds: keep the thread watcher
    watcher = asyncio.PidfdChildWatcher()
    asyncio.set_child_watcher(watcher)
    watcher.attach_loop(loop)


if __name__ == "__main__":
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # A bootstrapper download may still block a worker thread for up to 30 s;
    # interpreter shutdown would join it, but SIGTERM must make us exit promptly.
    os._exit(code)
