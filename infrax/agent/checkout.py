"""A run's checkout of its job's revision, from a cache the container keeps.

The container has no route to the code host, nor to infrax: the executioner asks which revisions
the cache holds (`source-state`), gets from the job master what the revision needs besides them
(a git pack, a Mercurial bundle, or nothing), and stages it with the run as `.infrax-source`. Here
it goes into the cache (`<workdir>/cache/<project>.git` or `.hg`), and the run gets a checkout in
`checkout/` of its run directory: for git a clone sharing the cache's objects (`--shared`,
nothing copied) with only the revision's files written, or only the `sparse` paths; for Mercurial
a share of the cache's store (`hg share`) updated to the revision. The next partition of the
project on this container fetches only what is new.

Standard library only: this module runs inside bare containers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Final

CACHE_DIR_NAME: Final = "cache"
CHECKOUT_DIR_NAME: Final = "checkout"
SOURCE_NAME: Final = ".infrax-source"  # staged with the run: what the cache lacks
STATE_LIMIT: Final = 50  # revisions a cache names; the job master takes at most this many
KEY: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,119}$")
REVISION: Final = re.compile(r"^[0-9a-f]{40}$")
_GIT_ENV: Final = {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


class CheckoutError(Exception):
    """The checkout could not be made; the message says which step and why."""


def hg_command() -> str:
    beside = Path(sys.executable).parent / "hg"
    return str(beside) if beside.exists() else (shutil.which("hg") or "hg")


def cache_state(workdir: Path, key: str) -> dict[str, list[str]]:
    """The revisions each of the project's caches holds (`git`, `hg`), newest first, at most
    STATE_LIMIT in all."""
    state: dict[str, list[str]] = {"git": [], "hg": []}
    git_cache, hg_cache = _caches(workdir, key)
    if (git_cache / "HEAD").exists():
        refs = ["for-each-ref", "--sort=-committerdate", "--format=%(objectname)", f"--count={STATE_LIMIT}"]
        state["git"] = _run(["git", "-C", str(git_cache), *refs, "refs/infrax/"], "list the cache").split()
    if (hg_cache / ".hg").is_dir() and len(state["git"]) < STATE_LIMIT:
        _forget_config(hg_cache)
        heads = ["log", "-r", "heads(all())", "-T", "{node}\n", "--limit", str(STATE_LIMIT - len(state["git"]))]
        state["hg"] = _run([hg_command(), "-R", str(hg_cache), *heads], "list the cache").split()
    return state


def check_out(workdir: Path, spec: dict[str, Any], run_dir: Path, fetched: Path) -> float:
    """The checkout in `run_dir/checkout`; the seconds it took."""
    started = time.monotonic()
    git_cache, hg_cache = _caches(workdir, spec["key"])
    source = fetched / SOURCE_NAME
    target = run_dir / CHECKOUT_DIR_NAME
    revision = spec["revision"]
    if spec["vcs"] == "git":
        if not (git_cache / "HEAD").exists():
            git_cache.parent.mkdir(parents=True, exist_ok=True)
            _run(["git", "init", "--quiet", "--bare", str(git_cache)], "make the cache")
        if spec.get("shallow"):  # the pack's history ends there: the cache must know before taking it
            known = set((git_cache / "shallow").read_text().split()) if (git_cache / "shallow").exists() else set()
            (git_cache / "shallow").write_text("".join(f"{n}\n" for n in sorted(known | set(spec["shallow"]))))
        if source.exists():
            with source.open("rb") as pack:
                _run(["git", "-C", str(git_cache), "index-pack", "--stdin", "--fix-thin"], "add the new objects", pack)
            source.unlink()
        _run(["git", "-C", str(git_cache), "update-ref", f"refs/infrax/{revision}", revision], "keep the revision")
        _share_objects(git_cache, target)
        if spec.get("sparse"):
            _run(
                ["git", "-C", str(target), "sparse-checkout", "set", "--no-cone", "--", *spec["sparse"]],
                "limit the checkout to its sparse paths",
            )
        _run(
            ["git", "-C", str(target), "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", revision],
            "check out the revision",
        )
    else:
        if not (hg_cache / ".hg").is_dir():
            hg_cache.parent.mkdir(parents=True, exist_ok=True)
            _run([hg_command(), "init", str(hg_cache)], "make the cache")
        _forget_config(hg_cache)
        if source.exists():
            _run([hg_command(), "-R", str(hg_cache), "unbundle", "--quiet", str(source)], "add the new changesets")
            source.unlink()
        # Sharing the cache's store, not copying it: a clone of a 2,000-file repository copied 4,000 revlogs.
        share = [hg_command(), "--config", "extensions.share=", "share", "--quiet", "--noupdate"]
        _run([*share, str(hg_cache), str(target)], "share the cache")
        _run([hg_command(), "-R", str(target), "update", "--quiet", "-r", revision], "check out the revision")
    return time.monotonic() - started


def _share_objects(cache: Path, target: Path) -> None:
    """A repository in `target` reading its objects from the cache's (what `clone --shared` does,
    which a shallow cache refuses): nothing is copied, and no ref of the cache is needed."""
    _run(["git", "init", "--quiet", str(target)], "make the checkout's repository")
    (target / ".git" / "objects" / "info" / "alternates").write_text(f"{cache / 'objects'}\n")
    if (cache / "shallow").exists():
        shutil.copyfile(cache / "shallow", target / ".git" / "shallow")


def _forget_config(repository: Path) -> None:
    """A run can write to its cache: a `.hg/hgrc` it planted there (hooks, extensions) is removed
    before the agent's hg reads the cache; the cache needs none of its own."""
    (repository / ".hg" / "hgrc").unlink(missing_ok=True)


def _caches(workdir: Path, key: str) -> tuple[Path, Path]:
    root = workdir / CACHE_DIR_NAME
    return root / f"{key}.git", root / f"{key}.hg"


# A run can write to its cache (it is in the container, which is the task's): no hook or monitor
# it plants there is ever run by the agent's git, nor a transport it names.
_GIT_GUARDS: Final = (
    *("-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false"),
    *("-c", "protocol.allow=never", "-c", "protocol.file.allow=always"),
)


def _run(argv: list[str], step: str, stdin: Any = subprocess.DEVNULL) -> str:
    if argv[0] == "git":
        argv = ["git", *_GIT_GUARDS, *argv[1:]]
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG") if name in os.environ}
    try:
        done = subprocess.run(argv, stdin=stdin, capture_output=True, env={**env, **_GIT_ENV}, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CheckoutError(f"could not {step}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip().splitlines()
        raise CheckoutError(f"could not {step}: {said[-1] if said else f'exit code {done.returncode}'}")
    return done.stdout.decode(errors="replace")
