"""A partition starts in a checkout of its job's revision, from its container's cache: git and
Mercurial, a warm container fetching only the new commits, sparse paths, or no checkout at all."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infrax.jobmaster.hg import hg_command
from infrax.model import ContainerType
from tests.e2e.conftest import Running
from tests.jobmaster.conftest import job_in

# Nothing but pytest: no fetching of the source, no cd (the interpreter spelled out for this machine).
PYTEST_ONLY = (
    "#!/bin/sh\n" + 'echo "work dir $INFRAX_WORK_DIR"\n' + f'exec {sys.executable} -m pytest -q -p no:randomly "$@"\n'
)
CONFIG = """version: 1
project: {project}
tasks:
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/test.sh
    files: "tests/**/test_*.py"
    partitions: 1
{extra}"""
ONE_CONTAINER = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=1, idle_timeout=60)]


def run(vcs: str, repo: Path, *args: str) -> str:
    command = [hg_command(), "--cwd", str(repo)] if vcs == "hg" else ["git", "-C", str(repo)]
    return subprocess.run([*command, *args], check=True, capture_output=True, text=True).stdout.strip()


def make_repo(vcs: str, repo: Path, extra: str = "", bootstrapper: str = PYTEST_ONLY) -> str:
    repo.mkdir(parents=True)
    (repo / "ci").mkdir()
    (repo / "ci" / "test.sh").write_text(bootstrapper)
    (repo / "ci" / "test.sh").chmod(0o755)
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "tests").mkdir()
    (repo / "tests" / "test_add.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n"
    )
    (repo / "docs").mkdir()
    (repo / "docs" / "big.txt").write_text(os.urandom(16_000).hex())  # what a warm cache is not sent again
    (repo / ".infrax.yml").write_text(CONFIG.format(project=f"co-{vcs}", extra=extra))
    if vcs == "hg":
        run("hg", repo, "init")
        run("hg", repo, "commit", "-A", "-q", "-m", "first", "-u", "t <t@infrax.invalid>")
        return run("hg", repo, "log", "-r", ".", "-T", "{node}")
    subprocess.run(["git", "init", "-q", "--initial-branch=main", str(repo)], check=True)
    run("git", repo, "add", "-A")
    run("git", repo, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-m", "first")
    return run("git", repo, "rev-parse", "HEAD")


def commit(vcs: str, repo: Path) -> str:
    (repo / "tests" / "test_mul.py").write_text("def test_mul():\n    assert 3 * 3 == 9\n")
    if vcs == "hg":
        run("hg", repo, "commit", "-A", "-q", "-m", "second", "-u", "t <t@infrax.invalid>")
        return run("hg", repo, "log", "-r", ".", "-T", "{node}")
    run("git", repo, "add", "-A")
    run("git", repo, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-m", "second")
    return run("git", repo, "rev-parse", "HEAD")


async def push(infrax: Running, repo: Path, revision: str) -> tuple[dict[str, Any], str]:
    """The job, once final, and its one partition's log."""
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert pushed.status_code == 201, pushed.text
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)
    request = await infrax.request(job["requestId"])
    [partition] = request.tasks[0].partitions
    log = (await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts/infrax/log.txt")).text
    return job, log


async def learned_overhead(infrax: Running, project: str, runs: int) -> dict[str, Any]:
    """The optimizer's learned overhead of the task `unit`, once it has learned from `runs` runs."""
    async with asyncio.timeout(30):
        while True:
            answer = await infrax["optimizer"].get("/api/v1/overheads", params={"project": project, "task": "unit"})
            assert answer.status_code == 200, answer.text
            if answer.json() and answer.json()[0]["checkoutSamples"] >= runs:
                return answer.json()[0]
            await asyncio.sleep(0.05)


def packs(cache: Path) -> list[int]:
    """Objects in each pack of a git cache, oldest first."""
    found = sorted((cache / "objects" / "pack").glob("*.idx"), key=lambda p: p.stat().st_mtime_ns)
    counts = []
    for index in found:
        listed = subprocess.run(["git", "verify-pack", "-v", str(index)], check=True, capture_output=True, text=True)
        counts.append(sum(1 for line in listed.stdout.splitlines() if re.match(r"^[0-9a-f]{40} ", line)))
    return counts


@pytest.mark.parametrize("vcs", ["git", "hg"])
async def test_a_bootstrapper_that_only_runs_pytest_passes_and_a_warm_container_fetches_only_the_new_commits(
    start_stack, tmp_path: Path, vcs: str
) -> None:
    infrax = await start_stack(container_types=ONE_CONTAINER)
    repo = tmp_path / "project"
    first = make_repo(vcs, repo)
    job, log = await push(infrax, repo, first)
    assert job["state"] == "completed", log
    assert "1 passed" in log and "sent" in log and "(0 revisions cached)" in log
    work = Path(re.search(r"work dir (\S+)", log).group(1)).parents[1]  # type: ignore[union-attr]

    # What a run could leave in its container's cache for the next: a hook for git to run.
    planted = tmp_path / "hook-ran"
    for cache_dir in (work / "cache").glob("*.git"):
        hook = cache_dir / "hooks" / "reference-transaction"
        hook.parent.mkdir(exist_ok=True)
        hook.write_text(f"#!/bin/sh\ntouch {planted}\n")
        hook.chmod(0o755)
    for cache_dir in (work / "cache").glob("*.hg"):
        hooks = "".join(f"{event} = touch {planted}\n" for event in ("changegroup", "pretxnchangegroup", "update"))
        (cache_dir / ".hg" / "hgrc").write_text(f"[hooks]\n{hooks}")

    second = commit(vcs, repo)
    job, log = await push(infrax, repo, second)
    assert not planted.exists(), "the agent's git or hg ran a hook a run planted in the cache"
    assert job["state"] == "completed", log
    assert "2 passed" in log and "(1 revisions cached)" in log, log
    sent = [int(n.replace(",", "")) for n in re.findall(r"sent ([\d,]+) bytes of source", log)]
    if vcs == "git":
        [cache] = (work / "cache").glob("*-co-git.git")  # t- or u-: a trusted push or not
        new_objects = run("git", repo, "rev-list", "--objects", second, "--not", first).splitlines()
        # The second pack holds exactly the second commit's new objects: commit, trees, one file.
        assert packs(cache) == [packs(cache)[0], len(new_objects)] and len(new_objects) == 4
    else:
        [cache] = (work / "cache").glob("*-co-hg.hg")
        assert run("hg", cache, "log", "-T", "{node}\n").split() == [second, first]
        run("hg", repo, "bundle", "--all", "-q", "--type", "none-v2", str(tmp_path / "all.hg"))
        assert sent and sent[0] < (tmp_path / "all.hg").stat().st_size / 2, "the second sent only what was new"

    # The optimizer learned each run's checkout as part of the task's overhead on its container type.
    learned = await learned_overhead(infrax, f"co-{vcs}", runs=2)
    assert learned["containerType"] == "linux_x86_64" and 0 < learned["checkout"] < 60, learned
    assert re.search(r"checkout took [\d.]+ s", log), log


async def test_sparse_paths_and_no_checkout(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(container_types=ONE_CONTAINER)
    sparse = tmp_path / "sparse"
    revision = make_repo("git", sparse, extra="    checkout: {sparse: [calc.py, tests/, ci/]}\n")
    job, log = await push(infrax, sparse, revision)
    assert job["state"] == "completed" and "1 passed" in log, log
    checkout = Path(re.search(r"work dir (\S+)", log).group(1)) / "checkout"  # type: ignore[union-attr]
    assert (checkout / "calc.py").exists() and not (checkout / "docs").exists(), "only the sparse paths are written"

    bare = tmp_path / "bare"
    revision = make_repo("git", bare, extra="    checkout: false\n")
    (bare / "ci" / "test.sh").write_text("#!/bin/sh\nls -A\n")
    run("git", bare, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-am", "ls")
    job, log = await push(infrax, bare, run("git", bare, "rev-parse", "HEAD"))
    assert job["state"] == "completed", log
    assert "calc.py" not in log and "bootstrapper" in log, "it starts in its run directory, no checkout"


async def test_a_shallow_checkout_has_only_the_last_commits(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(container_types=ONE_CONTAINER)
    repo = tmp_path / "deep"
    counts = '#!/bin/sh\necho "history $(git rev-list --count HEAD) commits"\nls tests\n'
    make_repo("git", repo, extra="    checkout: {depth: 2}\n", bootstrapper=counts)
    for n in range(5):
        (repo / f"change{n}.txt").write_text(f"{n}\n")
        run("git", repo, "add", "-A")
        run("git", repo, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-m", f"c{n}")
    job, log = await push(infrax, repo, run("git", repo, "rev-parse", "HEAD"))
    assert job["state"] == "completed", log
    assert "history 2 commits" in log and "test_add.py" in log, log
