"""`make bench-checkout`: how long a partition's checkout takes, cold and warm. Figures only.

    .venv/bin/python benchmarks/checkout.py [--files 2000] [--commits 500] [--vcs git] [--vcs hg]

A repository of `--files` files and `--commits` commits (made with `git fast-import`; its hg twin
with `hg convert`), pushed to a whole stack in this process with one process container: the first
push's partition checks out on an empty cache (cold), the second push, one commit later, on the
same container (warm). Printed per VCS: the checkout's seconds (the agent's own measure) and the
bytes of source sent to the container each time.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from rich.console import Console
from rich.table import Table

from infrax.config import COMPONENTS, Config
from infrax.jobmaster.hg import hg_command
from infrax.model import ContainerType
from infrax.stack import Stack

CONFIG = """version: 1
project: {project}
tasks:
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/run.sh
    files: "src/*.txt"
    partitions: 1
"""


def make_git(repo: Path, files: int, commits: int) -> None:
    """`files` files in the first commit, then `commits - 1` commits changing one file each."""
    subprocess.run(["git", "init", "-q", "--initial-branch=main", str(repo)], check=True)
    lines: list[str] = []
    stamp = 1_700_000_000

    def blob(text: str) -> None:
        data = text.encode()
        lines.append(f"data {len(data)}")
        lines.append(data.decode())

    for n in range(commits):
        lines.append("commit refs/heads/main")
        lines.append(f"committer bench <bench@infrax.invalid> {stamp + n} +0000")
        blob(f"commit {n}")
        if n == 0:
            for path, text in [
                (".infrax.yml", CONFIG.format(project=f"bench-{repo.name}")),
                ("ci/run.sh", "#!/bin/sh\nls src | wc -l\n"),
            ]:
                lines.append(f"M {'100755' if path.endswith('.sh') else '100644'} inline {path}")
                blob(text)
            for i in range(files):
                lines.append(f"M 100644 inline src/file{i:05}.txt")
                blob(f"file {i}\n" * 20)
        else:
            lines.append(f"M 100644 inline src/file{n % files:05}.txt")
            blob(f"file {n % files}, changed in commit {n}\n" * 20)
    subprocess.run(
        ["git", "-C", str(repo), "fast-import", "--quiet"], input="\n".join(lines) + "\n", text=True, check=True
    )
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "main"], check=True)


def commit_one(repo: Path, vcs: str) -> str:
    (repo / "src" / "file00000.txt").write_text(f"changed once more in {vcs} at {time.time()}\n")
    if vcs == "hg":
        subprocess.run([hg_command(), "--cwd", str(repo), "commit", "-q", "-m", "one more", "-u", "bench"], check=True)
        return _out([hg_command(), "--cwd", str(repo), "log", "-r", ".", "-T", "{node}"])
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=b@i", "-c", "user.name=b", "commit", "-qam", "one more"], check=True
    )
    return _out(["git", "-C", str(repo), "rev-parse", "HEAD"])


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


async def measure(repo: Path, vcs: str, data: Path) -> list[tuple[str, float, int]]:
    config = Config(
        data_dir=data,
        ports={n: 0 for n in COMPONENTS},
        container_types=[ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=1, idle_timeout=600)],
    )
    stack = Stack(config)
    await stack.start()
    figures = []
    try:
        async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {stack.admin_token}"}) as http:
            head = (
                _out([hg_command(), "--cwd", str(repo), "log", "-r", ".", "-T", "{node}"])
                if vcs == "hg"
                else _out(["git", "-C", str(repo), "rev-parse", "HEAD"])
            )
            for label, revision in (("cold (empty cache)", head), ("warm (one commit later)", None)):
                revision = revision or commit_one(repo, vcs)
                pushed = (
                    await http.post(
                        f"{stack.urls['jobmaster']}/api/v1/pushes", json={"repository": str(repo), "revision": revision}
                    )
                ).json()
                while True:
                    job = (await http.get(f"{stack.urls['jobmaster']}/api/v1/jobs/{pushed['id']}")).json()
                    if job["state"] in ("completed", "failed", "exception"):
                        break
                    await asyncio.sleep(0.1)
                request = (await http.get(f"{stack.urls['scheduler']}/api/v1/task-requests/{job['requestId']}")).json()
                partition = request["tasks"][0]["partitions"][0]
                log = (
                    await http.get(
                        f"{stack.urls['executioner']}/api/v1/partitions/{partition['id']}/artifacts/infrax/log.txt"
                    )
                ).text
                took = re.search(r"checkout took ([\d.]+) s", log)
                sent = re.search(r"sent ([\d,]+) bytes", log)
                if job["state"] != "completed" or took is None:
                    raise RuntimeError(f"the {label} push did not check out:\n{log}")
                figures.append((label, float(took.group(1)), int(sent.group(1).replace(",", "")) if sent else 0))
    finally:
        await stack.stop()
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=500)
    parser.add_argument("--vcs", action="append", choices=["git", "hg"])
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"infrax bench-checkout: {args.files:,} files, {args.commits} commits", title_justify="left")
    for column in ("repository", "checkout", "seconds", "source sent"):
        table.add_column(column, justify="right" if column != "repository" else "left")
    with tempfile.TemporaryDirectory(prefix="infrax-bench-checkout-") as root:
        Path(root).chmod(0o711)  # the containers' task users pass through to their folders
        git_repo = Path(root) / "git"
        started = time.monotonic()
        make_git(git_repo, args.files, args.commits)
        console.print(f"made the git repository in {time.monotonic() - started:.1f} s")
        for vcs in args.vcs or ["git", "hg"]:
            repo = git_repo
            if vcs == "hg":
                repo = Path(root) / "hg"
                started = time.monotonic()
                subprocess.run(
                    [hg_command(), "--config", "extensions.convert=", "convert", "-q", str(git_repo), str(repo)],
                    check=True,
                )
                subprocess.run([hg_command(), "--cwd", str(repo), "update", "-q", "tip"], check=True)
                console.print(f"converted it to Mercurial in {time.monotonic() - started:.1f} s")
            for label, seconds, sent in await measure(repo, vcs, Path(root) / f"data-{vcs}"):
                table.add_row(vcs, label, f"{seconds:.2f}", f"{sent:,} bytes")
    console.print(table)


if __name__ == "__main__":
    asyncio.run(main())
