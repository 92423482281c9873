"""The demo's job (a real git project: a build, then three test partitions on what it built) through
every component, on Podman containers."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.jobmaster.client import JobMasterClient
from infrax.model import ContainerType, Job, PushSubmission, is_final
from infrax.sample_project import break_one_test, make_sample_repo
from infrax.stack import Stack


async def _run_job(jobmaster: JobMasterClient, repo: Path, revision: str, timeout: float = 120) -> Job:
    job = await jobmaster.push(PushSubmission(repository=str(repo), revision=revision))
    deadline = time.monotonic() + timeout
    while not is_final(job.state):
        assert time.monotonic() < deadline, f"job still {job.state} after {timeout}s"
        await asyncio.sleep(0.2)
        job = await jobmaster.get(job.id)
    return job


def docker_config(
    tmp_path: Path, docker_url: str, agent_image: str, repo: Path, containers: int, **type_options: Any
) -> Config:
    """A whole stack's configuration on Podman containers of one type, with `repo` mounted read-only."""
    docker = ProviderConfig(
        "podman",
        kind="docker",
        capacity=containers,
        options={
            "url": docker_url,
            "image": agent_image,
            "owner": f"test-{uuid.uuid4().hex[:10]}",
            "extra_mounts": [str(repo)],
        },
    )
    linux = ContainerType(
        name="linux_x86_64",
        tags=["linux_x86_64", "linux"],
        providers=["podman"],
        max_concurrent=containers,
        memory="256m",
        **type_options,
    )
    return Config(
        data_dir=tmp_path / "data",
        ports=dict.fromkeys(COMPONENTS, 0),
        container_types=[linux],
        providers=[docker],
        agent_kill_grace=0.5,
    )


async def test_demo_job_on_docker_containers(tmp_path: Path, docker_url: str, agent_image: str) -> None:
    repo = tmp_path / "sample"
    good = make_sample_repo(repo, build=True)
    # The build clones the repository by its host path: mount only that, read-only.
    config = docker_config(tmp_path, docker_url, agent_image, repo, containers=3, idle_timeout=30, cpus=1)
    stack = Stack(config)
    await stack.start()
    try:
        jobmaster = JobMasterClient(stack.client("jobmaster", token=stack.admin_token))
        passed = await _run_job(jobmaster, repo, good)
        failed = await _run_job(jobmaster, repo, break_one_test(repo))
        provider = stack.services["provisioner"].providers["podman"]
        started = list(provider.start_durations)
    finally:
        await stack.stop()

    assert passed.state == "completed", passed.model_dump_json(indent=1)
    assert {t.name: t.state for t in passed.tasks} == {"build": "completed", "unit": "completed"}
    assert failed.state == "failed", failed.model_dump_json(indent=1)
    assert {t.name: t.state for t in failed.tasks} == {"build": "completed", "unit": "failed"}
    assert started, "no docker container was started"
    assert await provider.list() == []  # the provisioner removed its containers on stop
