"""The provider contract, on every implementation: `process` and `docker` (real Podman containers)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from infrax.agent.client import AgentClient, AgentUnreachable
from infrax.model import ContainerType
from infrax.provisioner.providers import ContainerProvider, ProviderError

from .conftest import PROVIDER_KINDS, SECRET, Bootstrappers, MakeProvider, RunToExit


async def test_create_answers_heartbeat_then_destroy(
    provider: ContainerProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    container_id = new_id()
    endpoint = await provider.create(container_id, container_type, SECRET)

    heartbeat = await AgentClient(endpoint.host, endpoint.port, SECRET).heartbeat()
    assert heartbeat["busy"] is False
    assert await provider.alive(container_id)
    assert container_id in await provider.list()

    await provider.destroy(container_id)
    assert not await provider.alive(container_id)
    assert container_id not in await provider.list()
    with pytest.raises(AgentUnreachable):
        await AgentClient(endpoint.host, endpoint.port, SECRET, connect_timeout=2).heartbeat()


async def test_runs_a_bootstrapper_it_is_given(
    provider: ContainerProvider,
    container_type: ContainerType,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    # What only a Python that ran the line can print: the container's own Python, whichever it is.
    answer = 'python3 -c "print(6 * 7)"'
    url = bootstrappers.add("hello.sh", f'#!/bin/sh\necho "hello from python $({answer})" "$@"\n')
    endpoint = await provider.create(new_id(), container_type, SECRET)

    exit_message, output = await run_to_exit(endpoint, url, "a", "b")

    assert exit_message["status"] == "completed", exit_message
    assert "hello from python 42 a b" in output


async def test_only_a_process_container_reaches_the_hosts_loopback(
    provider: ContainerProvider,
    container_type: ContainerType,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    # A process agent is on this host; a docker container has no network of its own by default.
    url = bootstrappers.add("reached.sh", "#!/bin/sh\necho reached\n")
    endpoint = await provider.create(new_id(), container_type, SECRET)

    exit_message, output = await run_to_exit(endpoint, url, inline=False)

    if provider.kind == "process":
        assert exit_message["status"] == "completed" and "reached" in output
    else:
        assert exit_message["status"] == "error" and "could not be fetched" in exit_message["message"]


async def test_destroy_and_alive_of_unknown_container(provider: ContainerProvider) -> None:
    await provider.destroy("never-created")
    assert not await provider.alive("never-created")


@pytest.mark.parametrize("kind", PROVIDER_KINDS)
async def test_list_finds_containers_a_dropped_provider_leaked(
    kind: str, make: MakeProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    first = make(kind, name="leaky")
    container_id = new_id()
    await first.create(container_id, container_type, SECRET)
    # The provisioner crashed: its provider object is gone, never closed; a new one takes over.
    second = make(kind, name="leaky")

    assert await second.list() == [container_id]
    assert await second.alive(container_id)
    await second.destroy(container_id)
    assert not await second.alive(container_id)
    assert await second.list() == []


async def test_other_owners_containers_are_not_listed(
    make: MakeProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    mine, theirs = make("docker", owner=f"test-a-{new_id()}"), make("docker", owner=f"test-b-{new_id()}")
    container_id = new_id()
    await mine.create(container_id, container_type, SECRET)

    assert await mine.list() == [container_id]
    assert await theirs.list() == []


async def test_concurrent_creates(
    provider: ContainerProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    ids = [new_id() for _ in range(3)]
    endpoints = await asyncio.gather(*(provider.create(i, container_type, SECRET) for i in ids))

    assert len({(e.host, e.port) for e in endpoints}) == 3
    beats = await asyncio.gather(*(AgentClient(e.host, e.port, SECRET).heartbeat() for e in endpoints))
    assert all(b["type"] == "heartbeat" for b in beats)
    assert sorted(ids) == sorted(await provider.list())


async def test_failed_start_is_a_provider_error_and_leaves_nothing(
    make: MakeProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    provider = make("docker", image="localhost/infrax-no-such-image:1")

    with pytest.raises(ProviderError, match="no image localhost/infrax-no-such-image:1"):
        await provider.create(new_id(), container_type, SECRET)
    assert await provider.list() == []


async def test_unreachable_engine_is_a_provider_error(make: MakeProvider) -> None:
    provider = make("docker", url="unix:///run/infrax-no-such-engine.sock")

    with pytest.raises(ProviderError, match="unreachable"):
        await provider.list()


async def test_agent_that_cannot_start_is_a_provider_error_with_its_output(
    make: MakeProvider, container_type: ContainerType, new_id: Callable[[], str]
) -> None:
    from infrax.provisioner.image import BASE_IMAGE

    provider = make("docker", image=BASE_IMAGE)  # python3 without the agent in it

    with pytest.raises(ProviderError, match=r"(?s)exited with code 1 before its agent was ready.*infrax"):
        await provider.create(new_id(), container_type, SECRET)
    assert await provider.list() == []


async def test_a_run_leaves_no_process_and_no_zombie_for_the_next(
    provider: ContainerProvider,
    container_type: ContainerType,
    new_id: Callable[[], str],
    bootstrappers: Bootstrappers,
    run_to_exit: RunToExit,
) -> None:
    # What a fork bomb stopped by pids.max leaves: orphans that exit on their own, and some that stay.
    litter = bootstrappers.add(
        "litter.sh",
        "#!/bin/sh\nfor i in $(seq 150); do (sleep 0.05 &) ; done\n"
        "for i in $(seq 5); do (setsid sleep 600 &) ; done\nsleep 0.5\n",
    )
    count = bootstrappers.add(
        "count.sh",
        "#!/bin/sh\nz=0\nfor s in /proc/[0-9]*/stat; do\n"
        '  case "$(cut -d" " -f3 "$s" 2>/dev/null)" in Z) z=$((z+1));; esac\ndone\n'
        'echo "zombies=$z sleepers=$(grep -l "s[l]eep" /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"\n',
    )
    endpoint = await provider.create(new_id(), container_type, SECRET)

    first, output = await run_to_exit(endpoint, litter)
    assert first["status"] == "completed" and "unhealthy" not in first, output
    second, output = await run_to_exit(endpoint, count)
    assert second["status"] == "completed" and "zombies=0 sleepers=0" in output, output
