"""Build → test through an artifact, a failing build, refused graphs: the whole stack on loopback."""

from __future__ import annotations

from pathlib import Path

from infrax.model import State
from tests.e2e.conftest import script, task

BUILD = """mkdir -p "$INFRAX_ARTIFACTS_DIR/dist" src
echo "version 1.0 built from $INFRAX_REVISION" > src/VERSION
tar czf "$INFRAX_ARTIFACTS_DIR/dist/app.tar.gz" src
echo built
"""
TEST = """tar xzf "$INFRAX_FETCHES_DIR/dist/app.tar.gz"
grep -q "version 1.0" src/VERSION && echo "tested $* against $(cat src/VERSION)"
"""


async def test_build_then_four_test_partitions_through_its_artifact(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    build = task("build", script(tmp_path, "build.sh", BUILD), files=[])
    test = task(
        "test",
        script(tmp_path, "test.sh", TEST),
        files=[f"tests/test_{i}.py" for i in range(8)],
        partitions=4,
        dependsOn=["build"],
        fetches=[{"task": "build", "artifact": "dist/app.tar.gz"}],
    )
    submitted = await infrax.submit([build, test], revision="abc123")
    assert [t["state"] for t in submitted["tasks"]] == ["pending", "pending"]
    done = await infrax.wait_request(submitted["id"])

    assert done.state == State.COMPLETED, done.model_dump_json()
    [built], tests = done.tasks[0].partitions, done.tasks[1].partitions
    assert len(tests) == 4 and all(p.state == State.COMPLETED for p in tests)
    assert min(p.started_at for p in tests) > built.finished_at, "no test starts before the build has ended"  # type: ignore[operator]
    for partition in tests:
        log = (await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts/infrax/log.txt")).text
        assert "fetched dist/app.tar.gz" in log and "against version 1.0 built from abc123" in log, log


async def test_a_failing_build_cancels_the_tests_with_the_reason(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    build = task("build", script(tmp_path, "fails.sh", "echo broken; exit 2\n"), files=[])
    test = task("test", script(tmp_path, "test.sh", "echo never\n"), dependsOn=["build"])
    done = await infrax.wait_request((await infrax.submit([build, test]))["id"])
    assert done.state == State.FAILED
    assert [(t.name, t.state, t.message) for t in done.tasks] == [
        ("build", State.FAILED, "partition 1/1: exited with code 2"),  # what failed (infrax.failures)
        ("test", State.CANCELLED, "not run: its dependency 'build' ended failed"),
    ]
    assert done.tasks[1].partitions == []


async def test_a_cycle_and_an_unknown_dependency_are_a_422_naming_them(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    run = script(tmp_path, "run.sh", "true\n")
    cycle = await infrax["scheduler"].post(
        "/api/v1/task-requests",
        json={"tasks": [task("a", run, dependsOn=["b"]), task("b", run, dependsOn=["a"])]},
    )
    assert cycle.status_code == 422 and "the tasks form a cycle: a → b → a" in cycle.text, cycle.text
    unknown = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"tasks": [task("a", run, dependsOn=["biuld"])]}
    )
    assert unknown.status_code == 422 and "depends on 'biuld', which is not a task of this request" in unknown.text
    listed = await infrax["scheduler"].get("/api/v1/task-requests")
    assert listed.json() == [], "nothing of a refused graph is kept"
