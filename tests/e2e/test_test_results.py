"""Results per test: a real pytest run's JUnit report, left in $INFRAX_REPORT_DIR, is stored per test,
served over REST (per partition, per task, per test across runs), names the failing test in the
partition's message, and gives the optimizer its per-file times without any plugin."""

from __future__ import annotations

import asyncio
import json
import sys
from asyncio.subprocess import PIPE
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from infrax.model import State
from tests.e2e.conftest import Running, script, task
from tests.e2e.test_checkout import make_repo, run
from tests.jobmaster.conftest import job_in

SUITE = {
    "tests/test_math.py": (
        "import time\n\ndef test_slow():\n    time.sleep(0.3)\n\ndef test_add():\n    assert 1 + 1 == 2\n"
    ),
    "tests/test_strings.py": (
        "class TestUpper:\n"
        "    def test_upper(self):\n        assert 'a'.upper() == 'B'\n\n"
        "    def test_lower(self):\n        assert 'A'.lower() == 'a'\n"
    ),
}


def pytest_project(root: Path) -> Path:
    for name, text in SUITE.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def runs_pytest(tmp_path: Path, project: Path) -> str:
    """The README's way: pytest's own --junitxml into $INFRAX_REPORT_DIR, nothing else."""
    return script(
        tmp_path,
        "pytest.sh",
        f'cd "{project}" && exec "{sys.executable}" -m pytest -q -p no:randomly -p no:cacheprovider '
        f'--junitxml="$INFRAX_REPORT_DIR/junit.xml" "$@"\n',
    )


async def cli(*args: str) -> tuple[int, str, str]:
    """The `infrax` command in a process of its own, while this loop serves the stack it asks."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "infrax.cli", *args, stdout=PIPE, stderr=PIPE, env={"COLUMNS": "200"}
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    return process.returncode or 0, out.decode(), err.decode()


async def results(infrax: Running, path: str, **params: Any) -> list[dict[str, Any]]:
    response = await infrax["executioner"].get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_real_pytest_runs_results_are_stored_served_and_teach_the_optimizer(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    project = pytest_project(tmp_path / "project")
    definition = task("unit", runs_pytest(tmp_path, project), sorted(SUITE), partitions=1)

    done = await infrax.wait_request((await infrax.submit([definition], project="demo"))["id"])

    [part] = done.tasks[0].partitions
    assert done.state == State.FAILED and part.state == State.FAILED
    assert part.message is not None and part.message.startswith(
        "exited with code 1: 1 test failed: tests/test_strings.py::TestUpper::test_upper (AssertionError: assert"
    ), part.message
    assert done.message is not None and "tests/test_strings.py::TestUpper::test_upper" in done.message

    tests = await results(infrax, f"/api/v1/partitions/{part.id}/tests")
    assert [(t["testId"], t["file"], t["outcome"]) for t in tests] == [
        ("tests/test_math.py::test_slow", "tests/test_math.py", "passed"),
        ("tests/test_math.py::test_add", "tests/test_math.py", "passed"),
        ("tests/test_strings.py::TestUpper::test_upper", "tests/test_strings.py", "failed"),
        ("tests/test_strings.py::TestUpper::test_lower", "tests/test_strings.py", "passed"),
    ]
    assert tests[0]["duration"] >= 0.3 and tests[0]["runId"] == f"{part.id}-0" and tests[0]["project"] == "demo"
    assert "assert 'A' == 'B'" in tests[2]["message"] or "AssertionError" in tests[2]["message"]

    by_task = await results(infrax, "/api/v1/test-results", taskId=done.tasks[0].id, outcome="failed")
    assert [t["testId"] for t in by_task] == ["tests/test_strings.py::TestUpper::test_upper"]
    across = await results(infrax, "/api/v1/test-results", project="demo", testId="tests/test_math.py::test_slow")
    assert [(t["partitionId"], t["outcome"]) for t in across] == [(part.id, "passed")]
    paged = await infrax["executioner"].get(f"/api/v1/partitions/{part.id}/tests", params={"limit": 3})
    assert len(paged.json()) == 3 and 'rel="next"' in paged.headers["link"]
    unsaid = await infrax["executioner"].get("/api/v1/test-results")
    assert unsaid.status_code == 422 and "jobId, taskId, partitionId" in unsaid.text

    history: list[dict[str, Any]] = []
    for _ in range(100):  # learned from the bus, after the request is reported
        history = (await infrax["optimizer"].get("/api/v1/history", params={"project": "demo", "task": "unit"})).json()
        if len(history) == len(SUITE):
            break
        await asyncio.sleep(0.1)
    estimates = {h["file"]: h["estimate"] for h in history}
    assert set(estimates) == set(SUITE)
    assert estimates["tests/test_math.py"] == pytest.approx(tests[0]["duration"] + tests[1]["duration"], abs=1e-3)
    assert estimates["tests/test_math.py"] > estimates["tests/test_strings.py"]


async def test_a_report_that_is_not_junit_is_noted_in_the_log_and_the_run_ends_as_its_exit_says(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    hostile = (
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
        '<testsuite><testcase name="&lol2;"/></testsuite>'
    )
    leaves = script(tmp_path, "leaves.sh", f"printf '%s' '{hostile}' > \"$INFRAX_REPORT_DIR/junit.xml\"\n")
    done = await infrax.wait_request((await infrax.submit([task("unit", leaves)]))["id"])
    [part] = done.tasks[0].partitions
    assert part.state == State.COMPLETED
    assert await results(infrax, f"/api/v1/partitions/{part.id}/tests") == []
    log = (await infrax["executioner"].get(f"/api/v1/partitions/{part.id}/artifacts/infrax/log.txt")).text
    assert "test report reports/junit.xml not read: not a JUnit XML report" in log


async def test_a_jobs_failing_test_is_named_by_the_job_the_cli_and_the_partition_page(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    repo = tmp_path / "repo"
    pytest_args = '-q -p no:randomly -p no:cacheprovider --junitxml="$INFRAX_REPORT_DIR/j.xml"'
    junit = f'#!/bin/sh\nexec {sys.executable} -m pytest {pytest_args} "$@"\n'
    make_repo("git", repo, bootstrapper=junit)
    (repo / "tests" / "test_mul.py").write_text("def test_mul():\n    assert 3 * 3 == 10\n")
    run("git", repo, "add", "-A")
    run("git", repo, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-m", "breaks")
    revision = run("git", repo, "rev-parse", "HEAD")

    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert pushed.status_code == 201, pushed.text
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "failed", "completed", "exception", timeout=60)
    assert job["state"] == "failed" and "1 test failed: tests/test_mul.py::test_mul (assert" in job["message"]

    config = tmp_path / "cli.yml"
    ports = {name: int(url.rsplit(":", 1)[1]) for name, url in infrax.stack.urls.items()}
    config.write_text(yaml.safe_dump({"data_dir": str(infrax.stack.config.data_dir), "ports": ports}))
    code, shown, errors = await cli("tests", job["id"][:8], "--config", str(config))
    assert code == 0, errors
    assert "tests/test_mul.py::test_mul" in shown and "tests/test_add.py::test_add" in shown
    assert "1 passed, 1 failed" in shown and "unit/1" in shown
    code, failing, _ = await cli("tests", job["id"][:8], "--failed", "--json", "--config", str(config))
    [verdict] = json.loads(failing)
    assert (verdict["testId"], verdict["verdict"]) == ("tests/test_mul.py::test_mul", "failed")
    assert [(r["run"], r["outcome"]) for r in verdict["runs"]] == [(0, "failed")]

    request = await infrax.request(job["requestId"])
    [part] = request.tasks[0].partitions
    web = infrax.stack.urls["web"]
    async with httpx.AsyncClient(base_url=web, cookies={"infrax_token": infrax.stack.admin_token or ""}) as browser:
        page = (await browser.get(f"/partitions/{part.id}")).text
    assert "2 tests:" in page and "1 failed" in page and "1 passed" in page
    assert page.index("tests/test_mul.py::test_mul") < page.index("tests/test_add.py::test_add"), "failing first"
