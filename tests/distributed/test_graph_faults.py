"""A graph survives a component's kill -9 between its build and its tests: every task runs once.

Each component its own process on PostgreSQL and RabbitMQ. The build journals its start, waits
for the test to have killed the component, journals its end and leaves a tarball; each of the four
test partitions checks the tarball it fetched and journals its start.
"""

from __future__ import annotations

import asyncio
import collections
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.conftest import wait_final

TESTS = 4


def _project(repo: Path, journal: Path, go: Path) -> str:
    repo.mkdir(parents=True)
    (repo / "tests").mkdir()
    for i in range(TESTS * 2):
        (repo / "tests" / f"test_{i}.py").write_text(f"# {i}\n")
    (repo / "ci").mkdir()
    (repo / "ci" / "build.sh").write_text(
        "#!/bin/sh\nset -e\n"
        f'echo "build-start $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n'
        f"while [ ! -e {go} ]; do sleep 0.05; done\n"
        'mkdir -p "$INFRAX_ARTIFACTS_DIR/dist" app && echo "built $INFRAX_REVISION" > app/VERSION\n'
        'tar czf "$INFRAX_ARTIFACTS_DIR/dist/app.tar.gz" app\n'
        f'echo "build-done $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n'
    )
    (repo / "ci" / "test.sh").write_text(
        "#!/bin/sh\nset -e\n"
        'tar xzf "$INFRAX_FETCHES_DIR/dist/app.tar.gz"\n'
        'grep -q "built $INFRAX_REVISION" app/VERSION\n'
        f'echo "test $INFRAX_PARTITION_ID $INFRAX_RUN $*" >> {journal}\n'
    )
    for name in ("build.sh", "test.sh"):
        (repo / "ci" / name).chmod(0o755)
    (repo / ".infrax.yml").write_text(
        "version: 1\nproject: graph\ntasks:\n"
        "  - {name: build, containerTag: linux_x86_64, bootstrapper: ci/build.sh, files: [], maxRunTime: 120}\n"
        "  - name: test\n    containerTag: linux_x86_64\n    bootstrapper: ci/test.sh\n"
        f'    files: "tests/**/test_*.py"\n    partitions: {TESTS}\n    dependsOn: [build]\n'
        "    fetches: [{task: build, artifact: dist/app.tar.gz}]\n"
    )
    for args in (
        ["init", "--quiet", "--initial-branch=master"],
        ["config", "user.email", "graph@infrax.invalid"],
        ["config", "user.name", "Graph"],
        ["add", "-A"],
        ["commit", "--quiet", "-m", "build, then test"],
    ):
        subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)
    return subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.mark.parametrize("component", ["scheduler-1", "executioner-1"])
async def test_a_component_killed_between_the_build_and_its_tests_runs_every_task_once(
    make_cluster: Any, tmp_path: Path, component: str
) -> None:
    journal, go = tmp_path / "journal", tmp_path / "go"
    revision = _project(tmp_path / "graph", journal, go)
    cluster = await make_cluster(max_concurrent=4)

    def entries() -> list[list[str]]:
        return [line.split() for line in journal.read_text().splitlines()] if journal.exists() else []

    async def until(kind: str, count: int = 1) -> None:
        async with asyncio.timeout(60):
            while sum(e[0] == kind for e in entries()) < count:
                await asyncio.sleep(0.05)

    async with cluster.client("jobmaster", timeout=60) as jobmaster:
        pushed = await jobmaster.post(
            "/api/v1/pushes", json={"repository": str(tmp_path / "graph"), "revision": revision}
        )
        assert pushed.status_code == 201, pushed.text
        job_id = pushed.json()["id"]
        await until("build-start")
        cluster.kill(component)  # the build ends while it is away
        go.touch()
        await until("build-done")
        cluster.start(component)
        await cluster.wait_healthy(component)
        job = await wait_final(jobmaster, f"/api/v1/jobs/{job_id}", timeout=120)
    async with cluster.client("scheduler-1", timeout=60) as scheduler:
        request = (await scheduler.get(f"/api/v1/task-requests/{job['requestId']}")).json()

    kinds = collections.Counter(e[0] for e in entries())
    tests = collections.Counter(e[1] for e in entries() if e[0] == "test")
    print(f"\nFAULT kill -9 of the {component.split('-')[0]} between build and tests: journal {dict(kinds)}")
    assert job["state"] == "completed", (job, request, cluster.log(component))
    assert [(t["name"], t["state"]) for t in request["tasks"]] == [("build", "completed"), ("test", "completed")]
    assert kinds["build-start"] == 1 and kinds["build-done"] == 1, "the build ran once"
    assert len(tests) == TESTS and set(tests.values()) == {1}, f"each test partition ran once: {tests}"
