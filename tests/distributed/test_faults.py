"""Nothing accepted is lost: one fault per test, each component its own process on PostgreSQL and
RabbitMQ, a job of 400 partitions whose bootstrapper journals each start and end.

Each test asserts the same outcome: every partition `completed`, none completed twice (from the
journal), the task request and the job `completed`, and every partition's transitions received by
a recording consumer in order. Each prints a line with its figures (`pytest -s` shows them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrax.bus import topics
from infrax.bus.rabbitmq import RabbitMQBus
from tests.conftest import rabbitmqctl
from tests.distributed.conftest import Cluster, wait_final
from tests.e2e.conftest import agent_pid
from tests.jobmaster.conftest import GITHUB_REPOSITORY, RecordingGitHub, deliver, github_config, payload, with_revision

PARTITIONS = 400
PUSH_HEAD = "6113728f27ae82c7b1a177c8d03f9e96e0adf246"  # the branch head in push_with-new-branch
RANK = {"queued": 0, "dispatched": 1, "running": 2}


def _project(repo: Path, journal: Path, work: float) -> str:
    """A git repository whose one task runs each of 400 files alone. Its bootstrapper journals its
    start and, from a process in a session of its own (setsid), its end."""
    repo.mkdir(parents=True)
    (repo / "files").mkdir()
    for i in range(PARTITIONS):
        (repo / "files" / f"f{i:03}.txt").write_text(f"{i}\n")
    (repo / "ci").mkdir()
    (repo / "ci" / "work.sh").write_text(
        "#!/bin/sh\n"
        f'echo "start $INFRAX_PARTITION_ID $INFRAX_RUN $(date +%s.%N) $INFRAX_WORK_DIR" >> {journal}\n'
        f"setsid sh -c 'sleep {work}; echo \"done $INFRAX_PARTITION_ID $INFRAX_RUN $(date +%s.%N)\" >> {journal}' &\n"
        "wait\n"
    )
    (repo / "ci" / "work.sh").chmod(0o755)
    (repo / ".infrax.yml").write_text(
        "version: 1\nproject: faults\ntasks:\n"
        "  - name: work\n    containerTag: linux_x86_64\n    bootstrapper: ci/work.sh\n"
        f'    files: "files/*.txt"\n    partitions: {PARTITIONS}\n    retries: 3\n    maxRunTime: 60\n'
        "    checkout: false\n"  # faults are measured here; a checkout writes 400 files a partition
    )
    for args in (
        ["init", "--quiet", "--initial-branch=master"],
        ["config", "user.email", "faults@infrax.invalid"],
        ["config", "user.name", "Faults"],
        ["add", "-A"],
        ["commit", "--quiet", "-m", "400 partitions"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


class Recorder:
    """A consumer of partition transitions, as any user of the bus would be."""

    def __init__(self, bus_url: str) -> None:
        self.bus = RabbitMQBus(bus_url)
        self.seen: dict[str, list[tuple[int, str]]] = collections.defaultdict(list)

    async def start(self) -> None:
        await self.bus.start()
        self._subscription = await self.bus.subscribe("fault-recorder", topics.PARTITIONS, ["#"], self._record)

    async def _record(self, message: Any) -> None:
        part = message.body["partition"]
        self.seen[part["id"]].append((part["run"], part["state"]))

    async def completed(self, partition_ids: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while any(not self.seen[p] or self.seen[p][-1][1] != "completed" for p in partition_ids):
            if time.monotonic() > deadline:
                missing = [p for p in partition_ids if not self.seen[p] or self.seen[p][-1][1] != "completed"]
                raise AssertionError(
                    f"{len(missing)} partitions' completion never reached the bus: "
                    + "; ".join(f"{p}: {self.seen[p]}" for p in missing[:3])
                )
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        await self._subscription.cancel()
        await self.bus.close()


class Experiment:
    def __init__(self, cluster: Cluster, tmp_path: Path, recorder: Recorder, work: float) -> None:
        self.cluster = cluster
        self.journal = tmp_path / "journal"
        self.repo = tmp_path / "faults"
        self.revision = _project(self.repo, self.journal, work)
        self.recorder = recorder
        self.fault_started = 0.0
        self.fault_ended = 0.0

    def entries(self) -> list[list[str]]:
        if not self.journal.exists():
            return []
        return [line.split() for line in self.journal.read_text().splitlines() if line]

    def done(self) -> int:
        return sum(1 for e in self.entries() if e[0] == "done")

    async def push(self, jobmaster: httpx.AsyncClient) -> str:
        response = await jobmaster.post(
            "/api/v1/pushes", json={"repository": str(self.repo), "revision": self.revision}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def until_done(self, count: int, timeout: float = 120) -> None:
        async with asyncio.timeout(timeout):
            while self.done() < count:
                await asyncio.sleep(0.05)

    def fault(self) -> None:
        self.fault_started = time.time()

    def restored(self) -> None:
        self.fault_ended = time.time()

    async def _diagnosis(self, jobmaster: httpx.AsyncClient, job_id: str) -> str:
        """What a stuck job's request, partitions, journal and processes say, for the failure's text."""
        job = (await jobmaster.get(f"/api/v1/jobs/{job_id}")).json()
        lines = [f"job: {job}"]
        if job.get("requestId"):
            async with self.cluster.client("scheduler-1", timeout=60) as scheduler:
                request = (await scheduler.get(f"/api/v1/task-requests/{job['requestId']}")).json()
            partitions = [p for task in request.get("tasks", []) for p in task["partitions"]]
            lines.append(
                f"request: {request.get('state')}, partitions: {collections.Counter(p['state'] for p in partitions)}"
            )
            lines += [f"  {p}" for p in partitions if p["state"] != "completed"][:5]
        kinds = collections.Counter(e[0] for e in self.entries())
        lines.append(f"journal: {dict(kinds)}")
        for name in self.cluster.names:
            lines.append(f"--- {name} log (tail) ---\n{self.cluster.log(name)[-2500:]}")
        return "\n".join(lines)

    async def outcome(self, name: str, job_id: str) -> dict[str, Any]:
        """The assertions every fault test makes; returns the job."""
        async with self.cluster.client("jobmaster", timeout=60) as jobmaster:
            try:
                job = await wait_final(jobmaster, f"/api/v1/jobs/{job_id}", timeout=300)
            except AssertionError as error:
                raise AssertionError(f"{error}\n{await self._diagnosis(jobmaster, job_id)}") from None
        async with self.cluster.client("scheduler-1", timeout=60) as scheduler:
            request = (await scheduler.get(f"/api/v1/task-requests/{job['requestId']}")).json()
        partitions = request["tasks"][0]["partitions"]
        entries = self.entries()
        done = collections.Counter(e[1] for e in entries if e[0] == "done")
        twice = sorted(p for p, n in done.items() if n > 1)
        states = collections.Counter(p["state"] for p in partitions)
        after = [
            float(e[3]) for e in entries if e[0] == "done" and float(e[3]) > (self.fault_ended or self.fault_started)
        ]
        recovery = (min(after) - self.fault_ended) if after and self.fault_ended else float("nan")
        reruns = sum(p["run"] for p in partitions)
        print(
            f"\nFAULT {name}: {len(partitions)} partitions, {states.get('completed', 0)} completed, "
            f"lost {PARTITIONS - len(done)}, completed twice {len(twice)}, re-runs {reruns}, "
            f"first completion {recovery:.2f} s after the fault ended"
        )
        assert job["state"] == "completed", (job, self.cluster.log("scheduler-1")[-3000:])
        assert request["state"] == "completed"
        assert len(partitions) == PARTITIONS and states == {"completed": PARTITIONS}, states
        assert len(done) == PARTITIONS, f"{PARTITIONS - len(done)} partitions never completed"
        assert not twice, f"completed twice: {twice[:5]}"
        ids = {p["id"] for p in partitions}
        await self.recorder.completed(ids)
        for partition_id in ids:
            seen = self.recorder.seen[partition_id]
            # At least once: a batch published again after an outage repeats what came before; no
            # transition may come for the first time after a later one.
            first = list(dict.fromkeys(seen))
            order = [(run, RANK.get(state, 3)) for run, state in first]
            assert order == sorted(order), f"{partition_id}: transitions out of order: {seen}"
        return job


@pytest.fixture
async def experiment(make_cluster: Any, tmp_path: Path, cluster_backends: dict[str, str]) -> Any:
    recorders: list[Recorder] = []

    async def make(work: float = 0.1, **options: Any) -> Experiment:
        recorder = Recorder(cluster_backends["bus"])
        await recorder.start()  # its queue exists before the first message
        recorders.append(recorder)
        cluster = await make_cluster(max_concurrent=8, **options)
        return Experiment(cluster, tmp_path, recorder, work)

    yield make
    for recorder in recorders:
        await recorder.close()


async def test_postgresql_restart(experiment: Any) -> None:
    run = await experiment()
    async with run.cluster.client("jobmaster", timeout=60) as jobmaster:
        job_id = await run.push(jobmaster)
        await run.until_done(60)
        run.fault()
        await asyncio.to_thread(_pg_ctl, "restart")
        run.restored()
    await run.outcome("PostgreSQL restart", job_id)


@pytest.mark.parametrize("component", ["scheduler-1", "executioner-1", "provisioner", "optimizer"])
async def test_component_killed_and_restarted(experiment: Any, component: str) -> None:
    run = await experiment()
    async with run.cluster.client("jobmaster", timeout=60) as jobmaster:
        job_id = await run.push(jobmaster)
        await run.until_done(60)
        run.fault()
        in_flight = {e[1] for e in run.entries() if e[0] == "start"} - {e[1] for e in run.entries() if e[0] == "done"}
        run.cluster.kill(component)
        run.cluster.start(component)
        await run.cluster.wait_healthy(component)
        run.restored()
    await run.outcome(f"kill -9 of the {component.split('-')[0]}", job_id)
    if component.startswith("executioner"):
        starts = collections.Counter(e[1] for e in run.entries() if e[0] == "start")
        again = sorted(p for p in in_flight if starts[p] > 1)
        assert not again, f"runs in flight when the executioner was killed ran again: {again[:5]}"


async def test_job_master_killed_for_3_seconds_and_github_statuses_still_arrive(
    experiment: Any, tmp_path: Path
) -> None:
    github = RecordingGitHub(refuse_first=5)
    try:
        run = await experiment(**github_config(tmp_path / "faults", github, github_status_backoff=0.2))
        async with run.cluster.client("jobmaster", timeout=60) as jobmaster:
            body = with_revision(payload("push_with-new-branch.payload.json"), PUSH_HEAD, run.revision)
            pushed = await deliver(jobmaster, "push", body, "fault-push")
            assert pushed.status_code == 201, pushed.text
            job_id = pushed.json()["jobs"][0]["id"]
            await run.until_done(60)
            run.fault()
            run.cluster.kill("jobmaster")
            await asyncio.sleep(3)  # the fault itself: the job master stays away this long
            run.cluster.start("jobmaster")
            await run.cluster.wait_healthy("jobmaster")
            run.restored()
        await run.outcome("kill -9 of the job master for 3 s", job_id)
        path = f"/repos/{GITHUB_REPOSITORY}/statuses/{run.revision}"
        async with asyncio.timeout(60):
            while not any(r["path"] == path and r["body"]["state"] == "success" for r in github.requests):
                await asyncio.sleep(0.1)
        assert len(github.refused) == 5
    finally:
        github.close()


async def test_agents_killed_mid_run(experiment: Any) -> None:
    run = await experiment(work=0.4)
    async with run.cluster.client("jobmaster", timeout=60) as jobmaster:
        job_id = await run.push(jobmaster)
        await run.until_done(40)
        run.fault()
        killed = 0
        for _ in range(20):
            # Agents whose run started less than 0.2 s ago: it has 0.2 s of work left, a journal
            # line from it after the kill would be a process that outlived its agent.
            entries = run.entries()
            finished = {(e[1], e[2]) for e in entries if e[0] == "done"}
            now = time.time()
            for e in entries:
                if e[0] == "start" and (e[1], e[2]) not in finished and now - float(e[3]) < 0.2:
                    with contextlib.suppress(OSError, ValueError, LookupError):
                        os.kill(agent_pid(e[4]), signal.SIGKILL)
                        killed += 1
            if killed >= 12:
                break
            await run.until_done(run.done() + 8)
        run.restored()
        assert killed >= 12
    await run.outcome(f"kill -9 of {killed} agents", job_id)


async def test_rabbitmq_outage_of_10_seconds(experiment: Any) -> None:
    run = await experiment()
    async with run.cluster.client("jobmaster", timeout=60) as jobmaster:
        job_id = await run.push(jobmaster)
        await run.until_done(60)
        run.fault()
        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.sleep(10)  # the fault itself: the broker stays away this long
        await asyncio.to_thread(rabbitmqctl, "start_app")
        run.restored()
    await run.outcome("RabbitMQ stopped for 10 s", job_id)
    for name in run.cluster.names:
        log = (run.cluster.root / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"{name} logged a traceback:\n{log[-3000:]}"
        warnings = [line for line in log.splitlines() if "WARNING" in line and "broker" in line]
        assert len(warnings) <= 4, f"{name} logged {len(warnings)} broker warnings:\n" + "\n".join(warnings[:10])


def _pg_ctl(action: str) -> None:
    version = sorted(os.listdir("/etc/postgresql"))[-1]
    subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action], check=True)
