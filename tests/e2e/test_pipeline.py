"""The whole pipeline through REST: task request -> plan -> containers -> results on the bus."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from tests.e2e.conftest import agent_pid, host_pid, script, task


def _split(line: str) -> tuple[str, int]:
    work_dir, pid = line.split()
    return work_dir, int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: it runs nothing.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def _wait_for(condition, timeout: float = 20.0, message: str = "condition") -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(timeout / 0.05)):
        if await condition() if asyncio.iscoroutinefunction(condition) else condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {message}")


async def test_passing_and_failing_tasks(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    passing = script(tmp_path, "pass.sh", 'echo "files: $*"; echo "list:"; cat "$INFRAX_FILES_LIST"\n')
    failing = script(tmp_path, "fail.sh", 'echo "about to fail" >&2; exit 3\n')
    files = ["t/one.py", "t/two.py", "t/three.py", "t/four.py"]
    submitted = await infrax.submit([task("good", passing, files, partitions=2), task("bad", failing)])
    assert submitted["state"] == "pending" and len(submitted["tasks"]) == 2

    request = await infrax.wait_request(submitted["id"])

    assert request.state == "failed"
    good, bad = request.tasks
    assert good.state == "completed" and [p.state for p in good.partitions] == ["completed", "completed"]
    assert sorted(f for p in good.partitions for f in p.files) == sorted(files)
    first = good.partitions[0]
    log = (await infrax["executioner"].get(f"/api/v1/runs/{first.id}-0/log")).text
    assert f"files: {' '.join(first.files)}" in log
    assert "list:\n" + "\n".join(first.files) in log
    assert bad.state == "failed"
    assert bad.partitions[0].exit_code == 3 and "code 3" in (bad.partitions[0].message or "")
    bad_log = (await infrax["executioner"].get(f"/api/v1/runs/{bad.partitions[0].id}-0/log")).text
    assert "about to fail" in bad_log


async def test_max_run_time_kills_the_process_tree(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    pid_file = tmp_path / "child.pid"
    sleeper = script(tmp_path, "slow.sh", f'sleep 1000 &\necho "$INFRAX_WORK_DIR $!" > {pid_file}\nsleep 1000\n')
    submitted = await infrax.submit([task("slow", sleeper, maxRunTime=1)])
    await _wait_for(lambda: pid_file.exists() and pid_file.read_text().endswith("\n"), 10, "the child to start")
    child = host_pid(*_split(pid_file.read_text()))

    request = await infrax.wait_request(submitted["id"], timeout=30)

    partition = request.tasks[0].partitions[0]
    assert partition.state == "failed"
    assert "maxRunTime" in (partition.message or "")
    await _wait_for(lambda: not _alive(child), 5, "the background child to be killed")


async def test_lost_agent_runs_again_on_a_new_container(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    agents = tmp_path / "agents"
    flaky = script(
        tmp_path, "flaky.sh", f'echo $INFRAX_WORK_DIR >> {agents}\n[ "$INFRAX_RUN" = "1" ] && exit 0\nsleep 60\n'
    )
    submitted = await infrax.submit([task("flaky", flaky, retries=2)])
    await _wait_for(lambda: agents.exists() and agents.read_text().strip(), message="the first run to start")
    first_agent = agent_pid(agents.read_text().split()[0])

    os.kill(first_agent, signal.SIGKILL)
    request = await infrax.wait_request(submitted["id"], timeout=30)

    partition = request.tasks[0].partitions[0]
    assert (partition.state, partition.run) == ("completed", 1)
    first_dir, second_dir = agents.read_text().split()[:2]
    assert Path(second_dir).parent != Path(first_dir).parent, "the re-run ran on the same container"


async def test_lost_agent_past_retries_ends_as_exception(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    agents = tmp_path / "agents"
    doomed = script(tmp_path, "doomed.sh", f"echo $INFRAX_WORK_DIR >> {agents}\nsleep 60\n")
    submitted = await infrax.submit([task("doomed", doomed, retries=1)])
    for attempt in (1, 2):
        await _wait_for(
            lambda n=attempt: agents.exists() and len(agents.read_text().split()) >= n,
            message=f"run {attempt} to start",
        )
        os.kill(agent_pid(agents.read_text().split()[attempt - 1]), signal.SIGKILL)

    request = await infrax.wait_request(submitted["id"], timeout=30)

    partition = request.tasks[0].partitions[0]
    assert (partition.state, partition.run) == ("exception", 1)
    assert "retries used up" in (partition.message or "") and "lost the agent" in (partition.message or "")
    assert request.state == "exception"


async def test_cancel_stops_running_and_queued_partitions(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    pids = tmp_path / "pids"
    pids.mkdir()
    long = script(tmp_path, "long.sh", f'echo "$INFRAX_WORK_DIR $$" > {pids}/$INFRAX_CHUNK\nsleep 60\n')
    files = [f"f{i}.py" for i in range(5)]
    submitted = await infrax.submit([task("long", long, files, partitions=5)], jobId="job-to-cancel")
    await _wait_for(lambda: len(list(pids.iterdir())) == 3, message="three partitions running (the type's maximum)")
    running = [host_pid(*_split(p.read_text())) for p in pids.iterdir()]

    response = await infrax["scheduler"].post("/api/v1/jobs/job-to-cancel/cancel")
    assert response.status_code == 200, response.text

    request = await infrax.request(submitted["id"])
    assert request.state == "cancelled"
    assert [p.state for p in request.tasks[0].partitions] == ["cancelled"] * 5
    await _wait_for(lambda: not any(_alive(pid) for pid in running), 10, "cancelled processes to die")
    # A request queued after the cancel runs behind anything still dispatchable of the cancelled
    # one (the queue is in order): once it is done, a queued partition that survived would have started.
    marker = script(tmp_path, "marker.sh", "exit 0\n")
    after = await infrax.wait_request((await infrax.submit([task("marker", marker)]))["id"])
    assert after.state == "completed"
    assert len(list(pids.iterdir())) == 3, "a queued partition started after the cancel"
