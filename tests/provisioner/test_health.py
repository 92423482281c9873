"""Health monitoring on real agent processes: a container that stops answering or dies is found,
destroyed and replaced; its run is reported lost. Default heartbeat settings (1.5 s, 1 s, 3) unless
a test says otherwise, so the timings are the ones a deployment gets."""

from __future__ import annotations

import os
import signal
import time

from infrax.model import ContainerState, ContainerType
from tests.e2e.conftest import agent_pid

from .conftest import MakeHarness, make_offer, wait_for


def _pid(slot) -> int:  # type: ignore[no-untyped-def]
    """The agent's own pid (the container's process is `unshare`, its parent, where namespaces work)."""
    return agent_pid(str(slot.provider.root / slot.id / "work"))


async def test_busy_container_that_stops_answering_is_lost_within_10_seconds(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=3)
    made = await harness([linux])
    offer = make_offer()
    assert made.provisioner.offer([offer])[0].accepted
    await wait_for(lambda: made.executioner.assignments, what="the run handed to the executioner")
    slot = made.provisioner.slots[made.executioner.assignments[0].container_id]
    await wait_for(lambda: slot.last_heartbeat, timeout=5, what="a first heartbeat")

    os.kill(_pid(slot), signal.SIGSTOP)  # the agent stops answering; its process is still there
    frozen = time.monotonic()
    lost = await wait_for(
        lambda: [r for r in made.runs if r.run_id == offer.run_id], timeout=12, what="the run reported lost"
    )
    detected = time.monotonic() - frozen

    assert detected < 10, f"detected after {detected:.1f}s"
    assert lost[0].state == "exception" and lost[0].container_id == slot.id
    assert "stopped answering heartbeats (3 failed in a row" in (lost[0].message or "")
    # The run is reported before the container is destroyed, which takes the agent's exit: tens of ms.
    await wait_for(lambda: slot.id not in made.provisioner.slots, timeout=5, what="the lost container removed")
    assert made.provisioner.lost[("process", "unresponsive")] == 1
    # Destroying a frozen agent takes its kill grace; the "lost" event follows the destroy.
    await wait_for(
        lambda: any(e.event == "lost" and e.container_id == slot.id for e in made.events),
        timeout=15,
        what="the container's lost event",
    )
    assert not await slot.provider.alive(slot.id) and slot.id not in await slot.provider.list()
    # The warm pool is refilled with a fresh container.
    await wait_for(lambda: made.slots(ContainerState.IDLE), what="a replacement")
    print(f"\nunanswering busy container lost after {detected:.2f}s")


async def test_killed_idle_container_is_replaced_keeping_min_warm(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=2, max_concurrent=3)
    made = await harness([linux])
    idle = await wait_for(
        lambda: len(made.slots(ContainerState.IDLE)) == 2 and made.slots(ContainerState.IDLE),
        what="two warm containers",
    )
    victim = idle[0]

    os.kill(_pid(victim), signal.SIGKILL)
    killed = time.monotonic()
    await wait_for(lambda: victim.id not in made.provisioner.slots, timeout=12, what="the dead container dropped")
    detected = time.monotonic() - killed
    replaced = await wait_for(
        lambda: len(made.slots(ContainerState.IDLE)) == 2 and made.slots(ContainerState.IDLE),
        what="the pool back at min_warm",
    )

    assert detected < 10
    assert victim.id not in {s.id for s in replaced}
    assert made.provisioner.lost[("process", "gone")] == 1
    assert not made.runs  # it ran nothing: no run to report
    print(f"\nkilled idle container dropped after {detected:.2f}s")


async def test_a_short_stall_below_the_threshold_is_no_loss(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1)
    made = await harness(
        [linux],
        [
            harness.provider(
                heartbeat_interval=0.5,
                heartbeat_timeout=0.4,  # type: ignore[attr-defined]
                heartbeat_failures=6,
            )
        ],
    )
    slot = await wait_for(lambda: made.slots(ContainerState.IDLE), what="a warm container")
    slot = slot[0]
    await wait_for(lambda: slot.last_heartbeat, timeout=5, what="a first heartbeat")

    os.kill(_pid(slot), signal.SIGSTOP)
    await wait_for(lambda: slot.heartbeat_failures >= 1, timeout=5, what="a missed heartbeat")
    os.kill(_pid(slot), signal.SIGCONT)
    await wait_for(lambda: slot.heartbeat_failures == 0, timeout=5, what="heartbeats answered again")

    assert made.provisioner.slots.get(slot.id) is slot and slot.state == ContainerState.IDLE
    assert not made.provisioner.lost


async def test_heartbeats_go_to_busy_and_idle_containers_alike(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=2)
    made = await harness([linux], [harness.provider(heartbeat_interval=0.3)])  # type: ignore[attr-defined]
    made.provisioner.offer([make_offer()])
    busy = (await wait_for(lambda: made.slots(ContainerState.BUSY), what="a busy container"))[0]
    idle = (await wait_for(lambda: made.slots(ContainerState.IDLE), what="a warm container"))[0]

    await wait_for(lambda: busy.last_heartbeat and idle.last_heartbeat, timeout=5, what="heartbeats of both")
    assert busy.agent["type"] == "heartbeat" and idle.agent["busy"] is False
