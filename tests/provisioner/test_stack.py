"""Lost containers through the whole stack (process containers): the health checks and the
executioner both notice, the scheduler re-queues the partition once, and the re-run passes."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from infrax.bus import topics
from infrax.bus.messages import RunStatus
from infrax.model import ContainerType, State
from tests.e2e.conftest import agent_pid

from .stacks import bootstrapper, running_stack, task

# Hangs on the first run, passes on any re-run.
FIRST_RUN_HANGS = """echo "run $INFRAX_RUN"
if [ "$INFRAX_RUN" = 0 ]; then echo started; exec sleep 60; fi
echo passed
"""
LINUX = ContainerType(name="linux", tags=["linux"], max_concurrent=2, min_warm=1)


def _agent_pid(provisioner, container_id: str) -> int:  # type: ignore[no-untyped-def]
    return agent_pid(str(provisioner.slots[container_id].provider.root / container_id / "work"))


async def test_unanswering_agent_mid_partition_is_replaced_and_the_partition_rerun(tmp_path: Path) -> None:
    script = bootstrapper(tmp_path / "scripts", "hang.sh", FIRST_RUN_HANGS)
    async with running_stack(tmp_path / "data", [LINUX]) as stack:
        request = await stack.submit(task("hangs", script, retries=3))
        running = await stack.wait_partitions(request.id, lambda ps: ps[0].state == State.RUNNING, what="running")
        container_id = running[0].container_id
        assert container_id is not None

        os.kill(_agent_pid(stack.provisioner, container_id), signal.SIGSTOP)
        frozen = time.monotonic()
        await stack.wait_partitions(request.id, lambda ps: ps[0].run == 1, timeout=15, what="re-queued")
        detected = time.monotonic() - frozen
        done = await stack.wait_request(request.id)
        (partition,) = await stack.partitions(request.id)

    assert detected < 10, f"re-queued {detected:.1f}s after the agent froze"
    assert done.state == State.COMPLETED
    assert partition.run == 1 and partition.container_id != container_id
    first_run = [r for r in stack.runs if r.run == 0 and r.state != "running"]
    # The provisioner's report came first; the executioner's own news of run 0 (the agent ended
    # the run as it was destroyed) came after and changed nothing.
    assert first_run[0].state == "exception" and "stopped answering heartbeats" in (first_run[0].message or "")
    assert stack.provisioner.lost[("process", "unresponsive")] == 1


async def test_duplicate_loss_reports_requeue_once(tmp_path: Path) -> None:
    """A killed agent: the executioner's broken connection and the health check may both say
    `exception` for the same run; every further copy (here: two more) changes nothing."""
    script = bootstrapper(tmp_path / "scripts", "hang.sh", FIRST_RUN_HANGS)
    async with running_stack(tmp_path / "data", [LINUX]) as stack:
        duplicated: list[RunStatus] = []

        async def duplicate(status: RunStatus) -> None:
            if status.state == "exception" and status.run == 0 and not duplicated:
                duplicated.append(status)
                for _ in range(2):
                    await stack.stack.bus.publish(  # type: ignore[union-attr]
                        topics.RUNS,
                        topics.routing_key(
                            status.job_id,
                            status.task_id,
                            status.partition_id,
                            status.run,
                            status.container_type,
                            status.state,
                        ),
                        status.wire(),
                    )

        stack.on_run = duplicate
        request = await stack.submit(task("hangs", script, retries=5))
        running = await stack.wait_partitions(request.id, lambda ps: ps[0].state == State.RUNNING, what="running")
        os.kill(_agent_pid(stack.provisioner, running[0].container_id or ""), signal.SIGKILL)
        done = await stack.wait_request(request.id, timeout=30)
        (partition,) = await stack.partitions(request.id)

    assert done.state == State.COMPLETED
    assert partition.run == 1, f"re-queued {partition.run} times for one loss"
    exceptions = [r for r in stack.runs if r.run == 0 and r.state == "exception"]
    assert len(exceptions) >= 3  # the original(s) and the two copies
