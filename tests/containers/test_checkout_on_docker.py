"""Checkout on Podman containers without a network: a bootstrapper that only runs pytest passes on a
git and on a Mercurial repository, and the second push on the warm container sends only what is new."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infrax.jobmaster.client import JobMasterClient
from infrax.scheduler.client import SchedulerClient
from infrax.stack import Stack
from tests.containers.test_demo_on_docker import _run_job, docker_config
from tests.e2e.test_checkout import commit, make_repo

PYTEST_ONLY = '#!/bin/sh\nexec python3 -m pytest -q -p no:cacheprovider "$@"\n'


@pytest.mark.parametrize("vcs", ["git", "hg"])
async def test_pytest_only_on_a_checkout_in_a_container_without_a_network(
    tmp_path: Path, docker_url: str, agent_image: str, vcs: str
) -> None:
    repo = tmp_path / "project"
    first = make_repo(vcs, repo, bootstrapper=PYTEST_ONLY)
    # Nothing of the repository is mounted: its source reaches the container through infrax alone.
    config = docker_config(tmp_path, docker_url, agent_image, tmp_path / "nothing", containers=1, idle_timeout=60)
    (tmp_path / "nothing").mkdir()
    stack = Stack(config)
    await stack.start()
    logs = []
    try:
        jobmaster = JobMasterClient(stack.client("jobmaster", token=stack.admin_token))
        scheduler = SchedulerClient(stack.client("scheduler", token=stack.admin_token))
        executioner = stack.client("executioner", token=stack.admin_token)
        for revision in (first, None):
            job = await _run_job(jobmaster, repo, revision or commit(vcs, repo))
            request = await scheduler.get_request(job.request_id or "")
            [partition] = request.tasks[0].partitions
            logs.append((await executioner.get(f"/api/v1/partitions/{partition.id}/artifacts/infrax/log.txt")).text)
            assert job.state == "completed", logs[-1]
    finally:
        await stack.stop()
    assert "1 passed" in logs[0] and "(0 revisions cached)" in logs[0]
    assert "2 passed" in logs[1] and "(1 revisions cached)" in logs[1]
    sent = [int(re.search(r"sent ([\d,]+) bytes", log).group(1).replace(",", "")) for log in logs]  # type: ignore[union-attr]
    assert sent[1] < sent[0] / 2, f"the warm container got only what was new: {sent}"
