"""A run does not break its container for the next one: what it leaves is reaped, and a container it
broke says so (infrax.agent.health), so that it is retired and the next run is not charged with it."""

from __future__ import annotations

from pathlib import Path

from .conftest import AgentProcess, StartAgent
from .test_agent import Check, Script, collect, run_request


def _zombie_children(pid: int) -> list[int]:
    """The children of `pid` that exited and that nobody collected."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


async def test_orphans_a_run_leaves_are_killed_and_reaped(agent: AgentProcess, script: Script, check: Check) -> None:
    # 150 orphans that exit on their own (as a fork bomb's children do when pids.max stops it), and
    # some that would sleep on: re-parented to the agent, which must collect every one of them.
    litter = script(
        "litter.sh",
        """#!/bin/sh
for i in $(seq 150); do (sleep 0.05 &) ; done
for i in $(seq 5); do (setsid sleep 600 &) ; done
sleep 0.5
""",
    )
    messages = await collect(agent.client().run(run_request("litter", litter)), check)
    assert messages[-1]["status"] == "completed" and "unhealthy" not in messages[-1]
    assert _zombie_children(agent.process.pid) == []
    beat = check(await agent.client().heartbeat())
    assert beat["problem"] is None


async def test_a_broken_container_says_so_and_a_run_there_is_not_the_tasks_failure(
    start_agent: StartAgent, script: Script, check: Check, tmp_path: Path
) -> None:
    # More free disk asked for than any disk has: the agent's own view of a disk a run filled.
    agent = await start_agent("--min-free-disk", str(2**62))
    beat = check(await agent.client().heartbeat())
    assert beat["problem"] is not None and beat["problem"].startswith("out of disk")
    ran = tmp_path / "ran"
    boot = script("touch.sh", f"#!/bin/sh\ntouch {ran}\n")
    messages = await collect(agent.client().run(run_request("on-a-full-disk", boot)), check)
    ended = messages[-1]
    assert ended["status"] == "error" and ended["infrastructure"] is True
    assert ended["unhealthy"].startswith("out of disk") and "the container cannot run it" in ended["message"]
    assert not ran.exists(), "the bootstrapper ran in a broken container"
