"""Task code in a docker container reaches no infrax component, no database and no broker, and still
gets its bootstrapper (from the job master, through the executioner) and its source."""

from __future__ import annotations

import subprocess
from pathlib import Path

from yarl import URL

from infrax.jobmaster.client import JobMasterClient
from infrax.sample_project import make_sample_repo
from infrax.stack import Stack
from tests.containers.test_demo_on_docker import _run_job, docker_config

# Every address:port it tries, given as arguments: it prints what answered, and fails if anything did.
PROBE = """#!/bin/sh
set -e
python3 - "$@" <<'PY'
import socket, sys
reached = []
for target in [a for a in sys.argv[1:] if ":" in a]:  # after them come the partition's files
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        reached.append(target)
    except OSError as error:
        print(f"refused {target}: {error}")
print("reached:", " ".join(reached) or "nothing")
sys.exit(1 if reached else 0)
PY
# Its source: the revision, from the repository mounted read-only.
git clone --quiet --no-checkout "$INFRAX_REPOSITORY" src && git -C src checkout --quiet "$INFRAX_REVISION"
test -f src/calc.py && echo "source at $INFRAX_REVISION"
"""


async def test_a_task_in_a_container_reaches_nothing_of_infrax_and_still_gets_what_it_needs(
    tmp_path: Path, docker_url: str, agent_image: str
) -> None:
    repo = tmp_path / "sample"
    make_sample_repo(repo)
    (repo / "ci" / "probe.sh").write_text(PROBE)
    config_text = (repo / ".infrax.yml").read_text()
    config_text = config_text.replace("ci/bootstrap.sh", "ci/probe.sh")
    (repo / ".infrax.yml").write_text(config_text)
    stack = Stack(docker_config(tmp_path, docker_url, agent_image, repo, containers=2))
    await stack.start()
    try:
        ports = [f"127.0.0.1:{URL(url).port}" for url in stack.urls.values()]
        targets = [
            *ports,
            "127.0.0.1:5432",
            "127.0.0.1:5672",
            "10.88.0.1:5672",
            "10.88.0.1:5432",
            *(f"10.88.0.1:{URL(url).port}" for url in stack.urls.values()),
        ]
        config_text = config_text.replace(
            'bootstrapperArguments: ["--repository={repository}", "--revision={revision}"]',
            f"bootstrapperArguments: {targets!r}\n    env: "
            "{INFRAX_REPOSITORY: '{repository}', INFRAX_REVISION: '{revision}'}",
        )
        (repo / ".infrax.yml").write_text(config_text)
        subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(repo), "commit", "-qm", "probe"], check=True)
        revision = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
        ).stdout.strip()
        jobmaster = JobMasterClient(stack.client("jobmaster", token=stack.admin_token))
        job = await _run_job(jobmaster, repo, revision)
        request = await stack.services["scheduler"].get_request(job.request_id)
        logs = [
            (await stack.services["executioner"].get_run(f"{p.id}-{p.run}"))[1].read_text()
            for p in request.tasks[0].partitions
        ]
    finally:
        await stack.stop()

    assert job.state == "completed", logs[0]
    for log in logs:
        assert "reached: nothing" in log, log
        assert f"refused 127.0.0.1:{URL(stack.urls['scheduler']).port}" in log
        assert "refused 127.0.0.1:5432" in log and "refused 127.0.0.1:5672" in log
        assert f"source at {revision}" in log
