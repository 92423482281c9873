"""Every component its own process on PostgreSQL and RabbitMQ: the demo's job, two schedulers and two
executioners at once, a scheduler killed with -9, a RabbitMQ restart."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path

from infrax.sample_project import make_sample_repo
from tests.conftest import rabbitmqctl
from tests.distributed.conftest import in_flight_by_executioner, wait_final
from tests.e2e.conftest import script, task


def _journal(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line] if path.exists() else []


async def test_the_demo_job_runs_to_completion_with_every_component_its_own_process(make_cluster, tmp_path):
    cluster = await make_cluster()
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo)
    async with cluster.client("jobmaster", timeout=30) as jobmaster:
        response = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
        assert response.status_code == 201, response.text

        job = await wait_final(jobmaster, f"/api/v1/jobs/{response.json()['id']}")

    assert job["state"] == "completed", cluster.log("scheduler-1")
    assert [t["state"] for t in job["tasks"]] == ["completed"]
    async with cluster.client("scheduler-1") as scheduler:
        request = (await scheduler.get(f"/api/v1/task-requests/{job['requestId']}")).json()
    assert [p["state"] for p in request["tasks"][0]["partitions"]] == ["completed"] * 3


async def test_two_schedulers_and_two_executioners_run_each_of_500_partitions_exactly_once(make_cluster, tmp_path):
    cluster = await make_cluster(schedulers=2, executioners=2, max_concurrent=8)
    journal = tmp_path / "journal"
    once = script(tmp_path, "once.sh", f'echo "$INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n')
    files = [f"f{i}" for i in range(500)]
    async with (
        cluster.client("scheduler-1", timeout=60) as first,
        cluster.client("scheduler-2", timeout=60) as second,
    ):
        # Two requests, one through each scheduler: both dispatch from the one queue in PostgreSQL.
        ids = []
        for client, chunk in ((first, files[:250]), (second, files[250:])):
            response = await client.post(
                "/api/v1/task-requests", json={"tasks": [task("once", once, chunk, partitions=250, retries=0)]}
            )
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        requests = [await wait_final(first, f"/api/v1/task-requests/{i}", timeout=300) for i in ids]

    assert [r["state"] for r in requests] == ["completed", "completed"]
    partitions = [p for r in requests for p in r["tasks"][0]["partitions"]]
    assert len(partitions) == 500 and {p["state"] for p in partitions} == {"completed"}
    runs = collections.Counter(partition_id for partition_id, _ in _journal(journal))
    assert len(runs) == 500, f"{500 - len(runs)} partitions never ran"
    assert max(runs.values()) == 1, f"ran more than once: {[p for p, n in runs.items() if n > 1][:5]}"
    logs = cluster.log("executioner-1") + cluster.log("executioner-2")
    assert "Traceback" not in logs


async def test_scheduler_killed_with_200_partitions_in_flight_loses_none_and_reruns_none(make_cluster, tmp_path):
    cluster = await make_cluster(max_concurrent=8)
    journal = tmp_path / "journal"
    work = script(
        tmp_path,
        "work.sh",
        f'echo "start $INFRAX_PARTITION_ID" >> {journal}\nsleep 0.2\necho "done $INFRAX_PARTITION_ID" >> {journal}\n',
    )
    async with cluster.client("scheduler-1", timeout=60) as scheduler:
        response = await scheduler.post(
            "/api/v1/task-requests", json={"tasks": [task("work", work, [f"f{i}" for i in range(200)], partitions=200)]}
        )
        assert response.status_code == 201, response.text
        request_id = response.json()["id"]
        async with asyncio.timeout(60):
            while len([e for e in _journal(journal) if e[0] == "done"]) < 30:
                await asyncio.sleep(0.05)

        cluster.kill("scheduler-1")
        done_at_kill = {e[1] for e in _journal(journal) if e[0] == "done"}
        await asyncio.sleep(1.0)  # runs go on finishing while no scheduler listens
        cluster.start("scheduler-1")
        await cluster.wait_healthy("scheduler-1")
        request = await wait_final(scheduler, f"/api/v1/task-requests/{request_id}", timeout=300)

    partitions = request["tasks"][0]["partitions"]
    assert request["state"] == "completed", cluster.log("scheduler-1")
    assert len(partitions) == 200 and {p["state"] for p in partitions} == {"completed"}
    entries = _journal(journal)
    starts = collections.Counter(e[1] for e in entries if e[0] == "start")
    assert all(starts[p] == 1 for p in done_at_kill), "a partition that had completed ran again"
    assert all(p["run"] == 0 for p in partitions if p["id"] in done_at_kill)
    assert {e[1] for e in entries if e[0] == "done"} == {p["id"] for p in partitions}


async def test_rabbitmq_restart_mid_job_every_transition_still_reaches_the_job_master(make_cluster, tmp_path):
    cluster = await make_cluster(max_concurrent=2)
    repo = tmp_path / "sample"
    make_sample_repo(repo, test_files=8)
    config = (repo / ".infrax.yml").read_text().replace("partitions: 3", "partitions: 8")
    (repo / ".infrax.yml").write_text(config)
    (repo / "ci" / "bootstrap.sh").write_text(
        (repo / "ci" / "bootstrap.sh").read_text().replace("exec python3", "sleep 0.5\nexec python3")
    )
    import subprocess

    subprocess.run(["git", "-C", str(repo), "commit", "-qam", "slower, more partitions"], check=True)
    revision = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    async with cluster.client("jobmaster", timeout=60) as jobmaster:
        job_id = (await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})).json()[
            "id"
        ]
        async with asyncio.timeout(60):
            while (await jobmaster.get(f"/api/v1/jobs/{job_id}")).json()["state"] != "running":
                await asyncio.sleep(0.05)

        await asyncio.to_thread(rabbitmqctl, "stop_app")
        await asyncio.sleep(2)
        await asyncio.to_thread(rabbitmqctl, "start_app")
        job = await wait_final(jobmaster, f"/api/v1/jobs/{job_id}", timeout=180)

    assert job["state"] == "completed", cluster.log("scheduler-1")[-2000:]
    assert [t["state"] for t in job["tasks"]] == ["completed"]
    async with cluster.client("scheduler-1") as scheduler:
        request = (await scheduler.get(f"/api/v1/task-requests/{job['requestId']}")).json()
    assert [p["state"] for p in request["tasks"][0]["partitions"]] == ["completed"] * 8


async def test_an_executioner_killed_for_good_has_its_runs_taken_over_within_5_seconds(make_cluster, tmp_path):
    """Two executioners; the one following the runs is killed with -9 and never comes back. The
    other takes its runs over (they go on in their agents meanwhile), each completes once."""
    cluster = await make_cluster(executioners=2, max_concurrent=6)
    journal, gate = tmp_path / "journal", tmp_path / "gate"
    work = script(
        tmp_path,
        "work.sh",
        f'echo "start $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n'
        f"while [ ! -f {gate} ]; do sleep 0.05; done\n"
        f'echo "done $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n',
    )
    db = cluster.base["db"]
    async with cluster.client("scheduler-1", timeout=60) as scheduler:
        response = await scheduler.post(
            "/api/v1/task-requests",
            json={"tasks": [task("work", work, [f"f{i}" for i in range(6)], partitions=6, retries=0)]},
        )
        assert response.status_code == 201, response.text
        request_id = response.json()["id"]
        async with asyncio.timeout(60):
            while len(_journal(journal)) < 6 or sum((await in_flight_by_executioner(db)).values()) < 6:
                await asyncio.sleep(0.05)

        holders = await in_flight_by_executioner(db)
        victim = max(holders, key=holders.__getitem__)
        (survivor,) = {"executioner-1", "executioner-2"} - {victim}
        cluster.kill(victim)
        killed_at = asyncio.get_running_loop().time()
        async with asyncio.timeout(5):  # the bound: taken over within 5 s
            while (await in_flight_by_executioner(db)).get(victim):
                await asyncio.sleep(0.05)
        taken_after = asyncio.get_running_loop().time() - killed_at
        assert (await in_flight_by_executioner(db)).get(survivor) == 6

        gate.touch()
        request = await wait_final(scheduler, f"/api/v1/task-requests/{request_id}", timeout=120)

    partitions = request["tasks"][0]["partitions"]
    assert request["state"] == "completed", cluster.log(survivor)
    assert {p["state"] for p in partitions} == {"completed"} and {p["run"] for p in partitions} == {0}
    entries = _journal(journal)
    assert collections.Counter(e[0] for e in entries) == {"start": 6, "done": 6}, entries  # each once, not re-run
    assert f"takes over {holders[victim]} runs in flight of {victim}" in cluster.log(survivor)
    print(f"taken over {taken_after:.1f} s after the kill")
