"""Rows 1–7 of the probe from inside (docs/security.md): task code, and a token of one project, try
to reach beyond their own run. Each test is the attack, made again; each fails on the code the probe
found and passes now.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrax.config import COMPONENTS, Config, ConfigError, ProviderConfig
from infrax.model import ContainerType
from infrax.private import InsecurePath
from infrax.provisioner.providers.task_users import DEFAULT_UID_RANGE
from infrax.stack import Stack
from tests.e2e.conftest import Running, script, task
from tests.jobmaster.conftest import job_in

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching task code to other users needs root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A folder others may pass through (pytest's own are root's alone): bootstrappers the task users
    run, and data directories whose containers' folders those users must reach."""
    path = Path(tempfile.mkdtemp(prefix="infrax-reach-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(f"{path}/data-containers", ignore_errors=True)


PROBE = """#!/bin/sh
echo "uid=$(id -u)"
for target in "$@" /etc/shadow; do
  [ "$target" = "--" ] && break
  if [ -d "$target" ]; then ls "$target" >/dev/null 2>&1 && read=1 || read=0
  else cat "$target" >/dev/null 2>&1 && read=1 || read=0; fi
  [ $read = 1 ] && echo "READ-IT $target" || echo "refused $target"
done
"""


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("run_as", ["container", "nobody"])
async def test_task_code_reads_neither_the_store_nor_the_logs_nor_the_tokens_whatever_the_umask(
    start_stack, open_dir: Path, run_as: str
) -> None:
    previous = os.umask(0o022)  # the probe's: infrax started under a umask that opens new files to all
    try:
        provider = ProviderConfig("process", options={"run_as": run_as})
        infrax = await start_stack(providers=[provider], data_dir=open_dir / "data")
        data = infrax.stack.config.data_dir
        say = script(open_dir, "say.sh", "echo a line of an earlier run\n")
        earlier = await infrax.wait_request((await infrax.submit([task("say", say)]))["id"])
        logs = sorted((data / "logs").rglob("*.log"))
        assert logs, "the earlier run left no log"
        probe = script(open_dir, "probe.sh", PROBE)
        targets = [data, *(data / name for name in ("infrax.db", "infrax.db-wal", "admin.token", "logs")), *logs]
        definition = task("probe", probe, bootstrapperArguments=[*map(str, targets), "/etc/shadow", "--"])
        request = await infrax.wait_request((await infrax.submit([definition]))["id"])
    finally:
        os.umask(previous)
    partition = request.tasks[0].partitions[0]
    log = (await infrax["executioner"].get(f"/api/v1/runs/{partition.id}-{partition.run}/log")).text
    assert earlier.state == "completed" and request.state == "completed", log
    assert "READ-IT" not in log and log.count("refused") == len(targets) + 1, log
    uid = int(log.split("uid=", 1)[1].split()[0])
    assert uid != 0 and (uid == 65534 if run_as == "nobody" else uid in range(*_bounds(DEFAULT_UID_RANGE)))
    # What is on disk, whatever the umask: the data directory 0700, every file in it 0600.
    assert _mode(data) == 0o700
    for path in [data / "infrax.db", *data.glob("infrax.db-*"), data / "admin.token", *logs]:
        assert _mode(path) == 0o600, path
    for folder in [data / "logs", *(p for p in (data / "logs").rglob("*") if p.is_dir())]:
        assert _mode(folder) == 0o700, folder


def _bounds(uid_range: tuple[int, int]) -> tuple[int, int]:
    return uid_range[0], uid_range[0] + uid_range[1]


async def test_infrax_refuses_to_start_on_a_data_directory_others_may_read(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    stack = Stack(Config(data_dir=data, ports={n: 0 for n in COMPONENTS}))
    with pytest.raises(InsecurePath, match=str(data)):
        await stack.start()
    assert not (data / "infrax.db").exists(), "the store was made in an open folder"
    # The same from the command line: one line on stderr naming the folder, exit code 1.
    config = tmp_path / "infrax.yml"
    config.write_text(f"data_dir: {data}\n")
    done = subprocess.run(
        [sys.executable, "-m", "infrax.cli", "up", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and str(data) in done.stderr and "chmod 700" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    data.chmod(0o700)
    (data / "infrax.db").write_text("")
    (data / "infrax.db").chmod(0o644)  # a store an earlier start left open
    with pytest.raises(InsecurePath, match=r"infrax\.db"):
        await Stack(Config(data_dir=data, ports={n: 0 for n in COMPONENTS})).start()


async def test_infrax_up_as_root_runs_task_code_as_a_user_of_each_containers_own(open_dir: Path) -> None:
    # No provider configured at all: the defaults of `infrax up` (the e2e harness says run_as: self).
    config = Config(
        data_dir=open_dir / "data",
        ports={n: 0 for n in COMPONENTS},
        rerun_failures=0,
        container_types=[ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=2)],
    )
    stack = Stack(config)
    await stack.start()
    infrax = Running(stack)
    try:
        # Two runs at once, each leaving a file in its folder and trying the other's: neither reads it.
        shared = open_dir / "shared"
        shared.mkdir(mode=0o1777)
        shared.chmod(0o1777)
        reach = script(
            open_dir,
            "reach.sh",
            """echo "uid=$(id -u)"
cat "$(dirname "$0")/data/admin.token" >/dev/null 2>&1 && echo READ-ADMIN
cat /etc/shadow >/dev/null 2>&1 && echo READ-SHADOW
mine="$(pwd)"
echo "left by $INFRAX_PARTITION_ID" > "$mine/left-here"
echo "$mine" > "$1/$INFRAX_PARTITION_ID"
while [ "$(ls "$1" | wc -l)" -lt 2 ]; do sleep 0.05; done
for f in "$1"/*; do
  other="$(cat "$f")"
  [ "$other" = "$mine" ] && continue
  if cat "$other/left-here" 2>/dev/null; then echo "READ-OTHER"; else echo "refused the other's folder"; fi
done
""",
        )
        submitted = await infrax.submit(
            [task("reach", reach, partitions=2, files=["a.py", "b.py"], bootstrapperArguments=[str(shared)])]
        )
        request = await infrax.wait_request(submitted["id"])
        executioner = infrax["executioner"]
        logs = [(await executioner.get(f"/api/v1/runs/{p.id}-{p.run}/log")).text for p in request.tasks[0].partitions]
    finally:
        await infrax.close()
    assert request.state == "completed", logs
    uids = {int(log.split("uid=", 1)[1].split()[0]) for log in logs}
    assert len(uids) == 2 and 0 not in uids, logs
    for log in logs:
        assert "refused the other's folder" in log, log
        assert "READ-ADMIN" not in log and "READ-SHADOW" not in log and "READ-OTHER" not in log, log


async def _push(infrax: Running, repo: Path) -> dict[str, object]:
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
    assert pushed.status_code == 201, pushed.text
    return await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=60)


def _project_repo(path: Path, project: str, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    (path / "ci").mkdir()
    (path / "ci" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (path / ".infrax.yml").write_text(
        f"version: 1\nproject: {project}\ntasks:\n  - name: unit\n    containerTag: linux_x86_64\n"
        "    bootstrapper: ci/run.sh\n    files: [a.py]\n    allowEmpty: true\n"
    )
    for name, text in files.items():
        (path / name).write_text(text)
    subprocess.run(["git", "init", "-q", "--initial-branch=main", str(path)], check=True)
    subprocess.run(["git", "-C", str(path), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(path), "-c", "user.email=t@x.invalid", "-c", "user.name=t", "commit", "-qm", "one"],
        check=True,
    )
    return path


async def test_a_token_of_one_project_cannot_attach_to_read_or_rerun_another_projects_job(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    secret_text = "projb's private launch codes"
    repo_b = _project_repo(tmp_path / "b", "projb", {"a.py": "", "private.txt": secret_text})
    job_b = await _push(infrax, repo_b)
    assert job_b["state"] == "completed"
    assert infrax.stack.tokens is not None
    _, token_a = await infrax.stack.tokens.create("proja's bot", ["scheduler:create-task-request:proja"])
    as_a = {"Authorization": f"Bearer {token_a}"}
    ok = script(tmp_path, "ok.sh", "echo injected\n")

    # Row 3: a request of proja attached to projb's job: refused, nothing stored.
    attached = await infrax["scheduler"].post(
        "/api/v1/task-requests",
        json={"project": "proja", "jobId": job_b["id"], "tasks": [task("inject", ok)]},
        headers=as_a,
    )
    assert attached.status_code == 403 and "scheduler:attach-job:proja" in attached.json()["detail"]
    # Even a token that may attach (an admin's) cannot attach proja's request to projb's job.
    crossed = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"project": "proja", "jobId": job_b["id"], "tasks": [task("inject", ok)]}
    )
    assert crossed.status_code == 403 and "belongs to project projb" in crossed.json()["detail"]

    # Row 4: a bootstrapper URL naming projb's file: the run reads it with its own token, refused.
    jobmaster_url = infrax.stack.urls["jobmaster"]
    stolen = f"{jobmaster_url}/api/v1/jobs/{job_b['id']}/files/private.txt"
    reading = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"project": "proja", "tasks": [task("steal", stolen)]}, headers=as_a
    )
    assert reading.status_code == 201, reading.text
    request = await infrax.wait_request(reading.json()["id"])
    partition = request.tasks[0].partitions[0]
    log = (await infrax["executioner"].get(f"/api/v1/runs/{partition.id}-{partition.run}/log")).text
    assert request.state != "completed" and secret_text not in log and "403" in log, log

    # Row 6: projb's re-run runs projb's own task, and only it.
    rerun = await infrax["jobmaster"].post(f"/api/v1/jobs/{job_b['id']}/rerun")
    assert rerun.status_code == 200, rerun.text
    again = await job_in(infrax["jobmaster"], job_b["id"], "completed", "failed", "exception", timeout=60)
    requests = (await infrax["scheduler"].get("/api/v1/task-requests", params={"jobId": job_b["id"]})).json()
    assert again["state"] == "completed" and {r["project"] for r in requests} == {"projb"}
    assert len(requests) == 2
    for listed in requests:
        assert [t.name for t in (await infrax.request(listed["id"])).tasks] == ["unit"]


async def test_a_containers_folder_the_task_users_cannot_reach_is_refused_at_start(tmp_path: Path) -> None:
    # pytest's folders are root's alone: no task user could reach a container's folder below them.
    config = Config(
        data_dir=tmp_path / "data",
        ports={n: 0 for n in COMPONENTS},
        providers=[ProviderConfig("process", options={"run_as": "container"})],
    )
    with pytest.raises(ConfigError, match="closed to others"):
        await Stack(config).start()


@pytest.mark.parametrize("vcs", ["git", "hg"])
async def test_a_task_user_checks_out_git_and_mercurial(start_stack, open_dir: Path, tmp_path: Path, vcs: str) -> None:
    # What runs the checkout is the task user's: the tools must be ones it may run (setup-task-tools.sh).
    from tests.e2e.test_checkout import make_repo, push

    repo = tmp_path / vcs
    revision = make_repo(vcs, repo, bootstrapper='#!/bin/sh\necho "uid=$(id -u)"\nls\ncat calc.py\n')
    provider = ProviderConfig("process", options={"run_as": "container"})
    infrax = await start_stack(providers=[provider], data_dir=open_dir / "data")
    job, log = await push(infrax, repo, revision)
    assert job["state"] == "completed", log
    assert "def add(a, b)" in log and "uid=0" not in log, log
