"""What only real containers show: enforced limits, a kill from outside, isolation, the demo's path."""

from __future__ import annotations

import asyncio
import base64
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrax.agent.client import AgentClient, AgentConnectionLost
from infrax.model import ContainerType
from infrax.provisioner.providers.docker import DockerProvider
from infrax.sample_project import make_sample_repo

from .conftest import SECRET, Bootstrappers, MakeProvider, RunToExit

ALLOCATE = """#!/usr/bin/python3
import sys
chunks = []
for n in range(1, 65):
    chunks.append(b"x" * (8 << 20))  # written, so the pages are really used
    print(f"holding {8 * n} MiB", flush=True)
print("allocated everything: the limit was not enforced")
"""


@pytest.fixture
def docker(make: MakeProvider) -> DockerProvider:
    provider = make("docker")
    assert isinstance(provider, DockerProvider)
    return provider


async def test_memory_limit_is_enforced_and_reported(
    docker: DockerProvider,
    docker_client: Any,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    small = ContainerType(name="small", tags=["small"], memory="96m", cpus=0.5)
    container_id = new_id()
    endpoint = await docker.create(container_id, small, SECRET)
    host_config = docker_client.api.inspect_container(f"infrax-{container_id}")["HostConfig"]
    assert host_config["Memory"] == 96 << 20
    assert host_config["NanoCpus"] == 500_000_000

    exit_message, output = await run_to_exit(endpoint, bootstrappers.add("allocate.py", ALLOCATE))

    assert exit_message["status"] == "failed"
    assert exit_message["exitCode"] == 137
    assert "SIGKILL" in exit_message["message"] and "out of memory" in exit_message["message"]
    assert "holding 64 MiB" in output and "not enforced" not in output
    # Only the greedy process was killed: the agent lives on and takes the next run.
    assert await docker.alive(container_id)
    assert (await AgentClient(endpoint.host, endpoint.port, SECRET).heartbeat())["runsCompleted"] == 1


async def test_container_killed_from_outside(
    docker: DockerProvider,
    docker_client: Any,
    container_type: ContainerType,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
) -> None:
    container_id = new_id()
    endpoint = await docker.create(container_id, container_type, SECRET)
    script = b"#!/bin/sh\necho started\nexec sleep 60\n"
    client = AgentClient(endpoint.host, endpoint.port, SECRET)
    request = {
        "runId": "doomed",
        "bootstrapper": "/given/inline.sh",
        "maxRunTime": 120,
        "bootstrapperContent": base64.b64encode(script).decode(),
    }

    with pytest.raises(AgentConnectionLost):
        async with asyncio.timeout(20):
            async with client.run(request) as stream:
                async for message in stream:
                    if message["type"] == "output" and "started" in message["data"]:
                        await asyncio.to_thread(docker_client.api.kill, f"infrax-{container_id}")

    assert not await docker.alive(container_id)
    assert container_id in await docker.list()  # still there to be found and removed
    await docker.destroy(container_id)
    assert container_id not in await docker.list()


async def test_partitions_are_isolated(
    docker: DockerProvider,
    container_type: ContainerType,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    first = await docker.create(new_id(), container_type, SECRET)
    second = await docker.create(new_id(), container_type, SECRET)
    write = bootstrappers.add(
        "write.sh", "#!/bin/sh\nset -e\necho secret > /tmp/mine\necho secret > /work/mine\necho secret > mine\npwd\n"
    )
    look = bootstrappers.add(
        "look.sh",
        "#!/bin/sh\nfor f in /tmp/mine /work/mine; do\n"
        '  if [ -e $f ]; then echo "SEES $f"; fi\ndone\n'
        "find /work /tmp /var/tmp /root /home /opt -name mine 2>/dev/null"
        " | sed 's/^/SEES /'\nexit 0\n",
    )

    exit_message, written_in = await run_to_exit(first, write)
    assert exit_message["status"] == "completed", written_in
    exit_message, seen = await run_to_exit(second, look)

    assert exit_message["status"] == "completed"
    assert "SEES" not in seen, f"the second container sees the first one's files:\n{seen}"


# A bootstrapper that clones the repository itself (from a folder of the host mounted read-only)
# instead of starting in infrax's checkout: what `extra_mounts` is for.
CLONE_AND_TEST = """#!/bin/sh
set -e
repository="${1#--repository=}"; revision="${2#--revision=}"; shift 2
git clone --quiet --no-checkout "$repository" src
cd src
git -c advice.detachedHead=false checkout --quiet "$revision"
exec python3 run_tests.py "$@"
"""


async def test_demo_job_clones_a_host_repository_mounted_read_only(
    make: MakeProvider,
    container_type: ContainerType,
    new_id: Callable[[], str],
    tmp_path: Path,
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    repository = tmp_path / "repos" / "sample"
    revision = make_sample_repo(repository)
    docker = make("docker", extra_mounts=[str(tmp_path / "repos")])
    endpoint = await docker.create(new_id(), container_type, SECRET)
    url = bootstrappers.add("bootstrap.sh", CLONE_AND_TEST)

    exit_message, output = await run_to_exit(
        endpoint, url, f"--repository={repository}", f"--revision={revision}", "tests/test_1.py", "tests/test_2.py"
    )

    assert exit_message["status"] == "completed", output
    assert "Ran 4 tests" in output
    touch = bootstrappers.add("touch.sh", f"#!/bin/sh\ntouch {repository}/x\n")
    exit_message, output = await run_to_exit(endpoint, touch)
    assert exit_message["status"] == "failed" and "Read-only file system" in output


async def test_bridge_network_publishes_the_agent_port_on_loopback_only(
    make: MakeProvider, docker_client: Any, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    docker = make("docker", network_mode="bridge")
    container_id = new_id()
    endpoint = await docker.create(container_id, container_type, SECRET)

    assert (await AgentClient(endpoint.host, endpoint.port, SECRET).heartbeat())["type"] == "heartbeat"
    ports = docker_client.api.inspect_container(f"infrax-{container_id}")["NetworkSettings"]["Ports"]["8000/tcp"]
    assert [(p["HostIp"], int(p["HostPort"])) for p in ports] == [("127.0.0.1", endpoint.port)]


async def test_start_and_removal_times(
    docker: DockerProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    removals = []
    for _ in range(5):
        container_id = new_id()
        await docker.create(container_id, container_type, SECRET)
        started = time.monotonic()
        await docker.destroy(container_id)
        removals.append(time.monotonic() - started)

    starts = list(docker.start_durations)
    assert len(starts) == 5 and docker.last_start_duration == starts[-1]
    print(
        f"\ncontainer start to agent ready: median {statistics.median(starts):.3f}s "
        f"(min {min(starts):.3f}, max {max(starts):.3f}); "
        f"removal: median {statistics.median(removals):.3f}s (max {max(removals):.3f})"
    )
    assert statistics.median(starts) < 5
    assert statistics.median(removals) < 3


async def test_cancelled_create_leaves_no_container(
    docker: DockerProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    cancelled = 0
    for delay in (0.0, 0.05, 0.15, 0.3):
        container_id = new_id()
        task = asyncio.create_task(docker.create(container_id, container_type, SECRET))
        await asyncio.sleep(delay)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            cancelled += 1
        else:  # a warm engine can start one in less than the longest delay: then it is ours to remove
            await docker.destroy(container_id)
    assert cancelled >= 2, "the cancels came too late to test anything"

    async with asyncio.timeout(15):
        while await docker.list():
            await asyncio.sleep(0.1)


async def test_provider_without_an_image_uses_the_agent_image_of_the_current_source(
    make: MakeProvider, agent_image: str
) -> None:
    from infrax.provisioner.image import agent_image_ref

    provider = make("docker", image=None)
    assert isinstance(provider, DockerProvider)

    assert await provider.ensure_image() == agent_image_ref() == agent_image


def test_agent_image_tag_changes_with_the_agent_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from infrax.provisioner import image

    source = Path(image.__file__).resolve().parents[2]
    (tmp_path / "infrax" / "agent").mkdir(parents=True)
    for name, path in image.agent_files():
        (tmp_path / name).write_bytes(path.read_bytes())
    monkeypatch.setattr(image, "_PACKAGE_ROOT", tmp_path)
    before = image.agent_image_ref()
    monkeypatch.setattr(image, "_PACKAGE_ROOT", source)
    assert image.agent_image_ref() == before  # same files, same tag

    monkeypatch.setattr(image, "_PACKAGE_ROOT", tmp_path)
    server = tmp_path / "infrax" / "agent" / "server.py"
    server.write_text(server.read_text() + "\n# changed\n")
    assert image.agent_image_ref() != before
    assert image.agent_image_ref().startswith("localhost/infrax-agent:")
