"""A control plane on two hosts (network namespaces), each running every component (`infrax up`),
sharing one PostgreSQL and one RabbitMQ (on this machine, reached over each host's link): one host
is lost whole mid-job, and the other carries the job to its end, nothing lost and nothing twice."""

from __future__ import annotations

import asyncio
import collections
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from infrax.config import COMPONENTS
from infrax.sample_project import make_sample_repo
from tests.distributed.conftest import in_flight_by_executioner, wait_final
from tests.e2e.conftest import free_ports, script, task, wait_healthy
from tests.fleet.hosts import Host, forwarded, hosts, kill_everything_in
from tests.fleet.test_hosts import stop
from tests.jobmaster.conftest import job_in

POSTGRES_PORT, RABBITMQ_PORT = 5432, 5672
PER_HOST = 3  # containers


def start_host(host: Host, name: str, tmp_path: Path, backends: dict[str, str], ports: dict[str, int]) -> Any:
    """`infrax up` on the host, its store and broker reached at this machine's end of its link."""
    home = tmp_path / name
    home.mkdir()
    config = {
        "name": name,  # its executioner's, stable across restarts
        "data_dir": str(home / "data"),
        "db": backends["db"].replace("127.0.0.1", host.gateway),
        "bus": backends["bus"].replace("127.0.0.1", host.gateway),
        "host": "0.0.0.0",
        "ports": ports,
        "urls": {component: f"http://127.0.0.1:{port}" for component, port in ports.items()},
        "allowed_hosts": [host.address, "127.0.0.1"],
        "agent_kill_grace": 0.5,
        "in_flight_check_interval": 2.0,
        "providers": [{"name": "process", "options": {"run_as": "self"}}],
        "container_types": [{"name": "linux_x86_64", "tags": ["linux_x86_64"], "max_concurrent": PER_HOST}],
    }
    path = home / "infrax.yml"
    path.write_text(yaml.safe_dump(config))
    log = (home / "up.log").open("ab")
    command = host.command(sys.executable, "-m", "infrax.cli", "up", "--config", str(path))
    return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def journal_of(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line] if path.exists() else []


async def test_a_control_plane_host_lost_whole_mid_job_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path, cluster_backends: dict[str, str]
) -> None:
    journal, gate = tmp_path / "journal", tmp_path / "gate"
    work = script(
        tmp_path,
        "work.sh",
        f'echo "start $INFRAX_PARTITION_ID $INFRAX_RUN $INFRAX_WORK_DIR" >> {journal}\n'
        f"while [ ! -f {gate} ]; do sleep 0.05; done\n"
        f'echo "done $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n',
    )
    ports = dict(zip(COMPONENTS, free_ports(len(COMPONENTS)), strict=True))
    with hosts(2) as (a, b):
        gateways = [a.gateway, b.gateway]
        async with (
            forwarded(gateways, POSTGRES_PORT, ("127.0.0.1", POSTGRES_PORT)),
            forwarded(gateways, RABBITMQ_PORT, ("127.0.0.1", RABBITMQ_PORT)),
        ):
            up = {"host-a": start_host(a, "host-a", tmp_path, cluster_backends, ports)}
            up["host-b"] = start_host(b, "host-b", tmp_path, cluster_backends, ports)
            try:
                for host, name in ((a, "host-a"), (b, "host-b")):
                    try:
                        await wait_healthy(f"http://{host.address}:{ports['scheduler']}", up[name], timeout=60)
                    except AssertionError as error:
                        raise AssertionError(
                            f"{name}: {error}\n{(tmp_path / name / 'up.log').read_text()[-3000:]}"
                        ) from None
                token = (tmp_path / "host-a" / "data" / "admin.token").read_text().strip()
                headers = {"Authorization": f"Bearer {token}"}
                scheduler = httpx.AsyncClient(
                    base_url=f"http://{a.address}:{ports['scheduler']}", headers=headers, timeout=60
                )
                async with scheduler:
                    files = [f"f{i}" for i in range(2 * PER_HOST)]
                    answer = await scheduler.post(
                        "/api/v1/task-requests", json={"tasks": [task("work", work, files, partitions=len(files))]}
                    )
                    assert answer.status_code == 201, answer.text
                    request_id = answer.json()["id"]
                    async with asyncio.timeout(60):  # every partition running, half of them on each host
                        while len(journal_of(journal)) < 2 * PER_HOST:
                            await asyncio.sleep(0.05)
                    on_b = {e[1] for e in journal_of(journal) if "/host-b/" in e[3]}
                    assert len(on_b) == PER_HOST, journal_of(journal)
                    assert (await in_flight_by_executioner(cluster_backends["db"])).get("host-b") == PER_HOST

                    kill_everything_in(b)  # the host is lost: every process of it, at once
                    killed_at = asyncio.get_running_loop().time()
                    async with asyncio.timeout(5):  # its runs taken over within 5 s
                        while (await in_flight_by_executioner(cluster_backends["db"])).get("host-b"):
                            await asyncio.sleep(0.05)
                    taken_after = asyncio.get_running_loop().time() - killed_at

                    gate.touch()
                    request = await wait_final(scheduler, f"/api/v1/task-requests/{request_id}", timeout=120)
                partitions = request["tasks"][0]["partitions"]
                assert request["state"] == "completed", (tmp_path / "host-a" / "up.log").read_text()[-3000:]
                entries = journal_of(journal)
                done = collections.Counter(e[1] for e in entries if e[0] == "done")
                assert done == {p["id"]: 1 for p in partitions}, entries  # each completed once
                # Those lost with host B ran again on A, as an infrastructure failure's re-run.
                assert {p["id"] for p in partitions if p["run"] == 1} == on_b
                assert all("/host-a/" in e[3] for e in entries if e[0] == "start" and e[2] == "1")

                # Pushes are answered, and jobs run, by the job master that is left.
                repo = tmp_path / "sample"
                revision = make_sample_repo(repo)
                async with httpx.AsyncClient(
                    base_url=f"http://{a.address}:{ports['jobmaster']}", headers=headers, timeout=60
                ) as jobmaster:
                    pushed = await jobmaster.post(
                        "/api/v1/pushes", json={"repository": str(repo), "revision": revision}
                    )
                    assert pushed.status_code == 201, pushed.text
                    job = await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception", timeout=90)
                    assert job["state"] == "completed", job
                print(f"host B's runs taken over {taken_after:.1f} s after it was lost")
            finally:
                for process in up.values():
                    stop(process)
