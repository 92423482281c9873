"""The whole stack on real Podman containers: isolation, a container killed from outside, an enforced
memory limit, and provider priorities (two `docker` providers on the one engine)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from infrax.model import ContainerState, ContainerType, PartitionOffer, State
from tests.provisioner.stacks import bootstrapper, running_stack, task

FIRST_RUN_HANGS = """echo "run $INFRAX_RUN on $(hostname)"
if [ "$INFRAX_RUN" = 0 ]; then echo started; exec sleep 120; fi
echo passed
"""
ALLOCATE = """#!/usr/bin/python3
chunks = []
for n in range(1, 65):
    chunks.append(b"x" * (8 << 20))
    print(f"holding {8 * n} MiB", flush=True)
print("allocated everything: the limit was not enforced")
"""


def _in_engine(docker_client: Any, container_id: str) -> bool:
    return bool(docker_client.api.containers(all=True, filters={"name": f"infrax-{container_id}"}))


async def test_partitions_of_one_task_cannot_see_each_others_files(
    tmp_path: Path, scripts: Path, docker_provider: Any
) -> None:
    look = bootstrapper(
        scripts,
        "isolated.sh",
        """set -e
echo "mine $INFRAX_CHUNK" > /tmp/mine-$INFRAX_CHUNK
echo "mine $INFRAX_CHUNK" > /work/mine-$INFRAX_CHUNK
echo "mine $INFRAX_CHUNK" > mine-$INFRAX_CHUNK
sleep 3   # both partitions are running now, each in its own container
seen=$(find / -xdev -name 'mine-*' 2>/dev/null; find /tmp /work /var/tmp -name 'mine-*' 2>/dev/null)
for f in $seen; do
  case "$f" in *mine-$INFRAX_CHUNK) ;; *) echo "SEES $f"; exit 1 ;; esac
done
echo "sees only its own: $(echo $seen | wc -w) files"
""",
    )
    linux = ContainerType(
        name="linux", tags=["linux"], providers=["podman"], max_concurrent=2, max_partitions=1, memory="128m"
    )
    async with running_stack(tmp_path / "data", [linux], [docker_provider("podman")]) as stack:
        request = await stack.submit(task("isolated", look, files=["a", "b"], partitions=2))
        done = await stack.wait_request(request.id, timeout=90)
        parts = await stack.partitions(request.id)

    assert done.state == State.COMPLETED, [(p.index, p.state, p.message) for p in parts]
    assert len({p.container_id for p in parts}) == 2
    starts = sorted(p.started_at for p in parts if p.started_at)
    finishes = sorted(p.finished_at for p in parts if p.finished_at)
    assert starts[1] < finishes[0], "the partitions did not overlap"


async def test_container_killed_mid_partition_is_replaced_and_the_partition_rerun(
    tmp_path: Path, scripts: Path, docker_provider: Any, docker_client: Any
) -> None:
    hang = bootstrapper(scripts, "hang.sh", FIRST_RUN_HANGS)
    linux = ContainerType(
        name="linux", tags=["linux"], providers=["podman"], max_concurrent=2, min_warm=1, memory="128m"
    )
    async with running_stack(tmp_path / "data", [linux], [docker_provider("podman")]) as stack:
        request = await stack.submit(task("hangs", hang, retries=2))
        running = await stack.wait_partitions(
            request.id, lambda ps: ps[0].state == State.RUNNING, timeout=60, what="running"
        )
        victim = running[0].container_id
        assert victim is not None

        await asyncio.to_thread(docker_client.api.kill, f"infrax-{victim}")
        killed = time.monotonic()
        await stack.wait_partitions(request.id, lambda ps: ps[0].run == 1, timeout=15, what="re-queued")
        requeued = time.monotonic() - killed
        while _in_engine(docker_client, victim):
            assert time.monotonic() - killed < 10, "the killed container was not removed within 10 s"
            await asyncio.sleep(0.1)
        removed = time.monotonic() - killed
        done = await stack.wait_request(request.id, timeout=60)
        (partition,) = await stack.partitions(request.id)
        warm = [c for c in stack.provisioner.containers() if c.state == ContainerState.IDLE]

    print(f"\nkilled container: re-queued after {requeued:.2f}s, removed after {removed:.2f}s")
    assert done.state == State.COMPLETED
    assert partition.run == 1 and partition.container_id not in (None, victim)
    assert any(r.run == 0 and r.state == "exception" for r in stack.runs)
    assert warm and victim not in {c.id for c in warm}  # min_warm kept with a new container


async def test_partition_past_its_memory_limit_fails_saying_so(
    tmp_path: Path, scripts: Path, docker_provider: Any
) -> None:
    greedy = scripts / "greedy.py"
    greedy.write_text(ALLOCATE)
    greedy.chmod(0o755)
    small = ContainerType(name="small", tags=["small"], providers=["podman"], max_concurrent=1, memory="96m", cpus=1)
    async with running_stack(tmp_path / "data", [small], [docker_provider("podman")]) as stack:
        request = await stack.submit(task("greedy", str(greedy), tag=["small"], retries=2))
        done = await stack.wait_request(request.id, timeout=90)
        (partition,) = await stack.partitions(request.id)

    assert done.state == State.FAILED
    assert partition.state == State.FAILED and partition.run == 0  # a failure of the task, not re-run
    assert partition.exit_code == 137
    assert "out of memory" in (partition.message or "") and "SIGKILL" in (partition.message or ""), partition.message


async def test_first_provider_fills_then_the_next_and_the_sixth_partition_waits(
    tmp_path: Path, scripts: Path, docker_provider: Any
) -> None:
    gate = scripts / "gate"  # the containers see the scripts' folder: their runs end when it appears
    work = bootstrapper(scripts, "work.sh", f"echo working; while [ ! -f {gate} ]; do sleep 0.05; done\n")
    linux = ContainerType(name="linux", tags=["linux"], providers=["a", "b"], max_concurrent=10, memory="128m")
    providers = [docker_provider("a", capacity=2), docker_provider("b", capacity=3)]
    async with running_stack(tmp_path / "data", [linux], providers) as stack:
        request = await stack.submit(task("six", work, files=[f"f{i}" for i in range(6)], partitions=6))
        five = await stack.wait_partitions(
            request.id, lambda ps: sum(p.state == State.RUNNING for p in ps) == 5, timeout=60, what="five running"
        )
        busy = [c for c in stack.provisioner.containers() if c.state == ContainerState.BUSY]
        rejected = stack.provisioner.offer([_extra_offer(five[0], stack.provisioner.run_tokens)])[0]
        gate.touch()
        done = await stack.wait_request(request.id, timeout=90)
        parts = await stack.partitions(request.id)

    assert sorted(c.provider for c in busy) == ["a", "a", "b", "b", "b"]
    waiting = [p for p in five if p.state == State.QUEUED]
    assert len(waiting) == 1, [(p.index, p.state) for p in five]
    assert not rejected.accepted
    assert rejected.reason == "every provider of linux is full or failing (a: 2/2; b: 3/3)"
    assert done.state == State.COMPLETED
    sixth = next(p for p in parts if p.id == waiting[0].id)
    first_done = min(p.finished_at for p in parts if p.id != sixth.id and p.finished_at)
    assert sixth.started_at is not None and sixth.started_at >= first_done
    # Its container is one the first five freed (no provider had room for another).
    assert sixth.container_id in {p.container_id for p in parts if p.id != sixth.id}


def _extra_offer(like: Any, run_tokens: Any) -> PartitionOffer:
    """Another run, with a genuine token: refused for want of room, not for want of a token."""
    return PartitionOffer(
        run_token=run_tokens.make("extra-0", "extra", 0, None, 60),
        run_id="extra-0",
        partition_id="extra",
        task_id=like.task_id,
        request_id=like.request_id,
        job_id=None,
        task_name="extra",
        index=1,
        count=1,
        run=0,
        container_type="linux",
        files=[],
        bootstrapper="/bin/true",
        bootstrapper_arguments=[],
        env={},
        max_run_time=60,
    )


async def test_frozen_container_mid_partition_is_found_by_heartbeats_and_replaced(
    tmp_path: Path, scripts: Path, docker_provider: Any, docker_client: Any
) -> None:
    """Paused from outside, the container keeps the executioner's connection open: only the
    provisioner's heartbeats can tell it is gone."""
    hang = bootstrapper(scripts, "hang.sh", FIRST_RUN_HANGS)
    linux = ContainerType(name="linux", tags=["linux"], providers=["podman"], max_concurrent=2, memory="128m")
    async with running_stack(tmp_path / "data", [linux], [docker_provider("podman")]) as stack:
        request = await stack.submit(task("hangs", hang, retries=2))
        running = await stack.wait_partitions(
            request.id, lambda ps: ps[0].state == State.RUNNING, timeout=60, what="running"
        )
        victim = running[0].container_id
        assert victim is not None

        await asyncio.to_thread(docker_client.api.pause, f"infrax-{victim}")
        frozen = time.monotonic()
        await stack.wait_partitions(request.id, lambda ps: ps[0].run == 1, timeout=15, what="re-queued")
        detected = time.monotonic() - frozen
        done = await stack.wait_request(request.id, timeout=60)
        (partition,) = await stack.partitions(request.id)
        while _in_engine(docker_client, victim):
            assert time.monotonic() - frozen < 20, "the frozen container was not removed"
            await asyncio.sleep(0.1)

    print(f"\nfrozen container: re-queued after {detected:.2f}s")
    assert detected < 10
    lost = next(r for r in stack.runs if r.run == 0 and r.state == "exception")
    assert "stopped answering heartbeats" in (lost.message or "")
    assert done.state == State.COMPLETED and partition.run == 1 and partition.container_id != victim
    assert stack.provisioner.lost[("podman", "unresponsive")] == 1


async def test_idle_container_killed_from_outside_is_replaced(
    tmp_path: Path, docker_provider: Any, docker_client: Any
) -> None:
    linux = ContainerType(
        name="linux", tags=["linux"], providers=["podman"], max_concurrent=2, min_warm=2, memory="128m"
    )
    async with running_stack(tmp_path / "data", [linux], [docker_provider("podman")]) as stack:

        def idle() -> list[str]:
            return [c.id for c in stack.provisioner.containers() if c.state == ContainerState.IDLE]

        deadline = time.monotonic() + 60
        while len(idle()) < 2:
            assert time.monotonic() < deadline, "the warm pool never filled"
            await asyncio.sleep(0.1)
        victim = idle()[0]

        await asyncio.to_thread(docker_client.api.kill, f"infrax-{victim}")
        killed = time.monotonic()
        while victim in idle() or len(idle()) < 2:
            assert time.monotonic() - killed < 10, "not replaced within 10 s"
            await asyncio.sleep(0.1)
        replaced = time.monotonic() - killed

    print(f"\nkilled idle container: replaced after {replaced:.2f}s")
    assert stack.provisioner.lost[("podman", "gone")] == 1
    assert not _in_engine(docker_client, victim)
