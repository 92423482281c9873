"""#16's must-show: a test that fails on its first attempt and passes on its second (by the attempt
number, not by chance) is intermittent and its job passes; a test that always fails is `failed`, and
its re-runs ran only the failing tests (a journal the bootstrapper writes); both in `infrax status`,
in the test verdicts and in Treeherder's messages, which validate against pulse-job.yml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from infrax.bus import Message, topics
from tests.conftest import shared_path
from tests.e2e.conftest import Running
from tests.e2e.test_checkout import make_repo, run
from tests.e2e.test_test_results import cli
from tests.jobmaster.conftest import job_in

FLAKY = "import os\n\n\ndef test_flaky():\n    assert os.environ['INFRAX_RUN'] != '0', 'fails on the first run only'\n"
BROKEN = "def test_broken():\n    assert 2 + 2 == 5\n"


def bootstrapper(journal: Path) -> str:
    pytest = f'{sys.executable} -m pytest -q -p no:randomly -p no:cacheprovider --junitxml="$INFRAX_REPORT_DIR/j.xml"'
    return f'#!/bin/sh\necho "$INFRAX_RUN $*" >> {journal}\nexec {pytest} "$@"\n'


def add(repo: Path, name: str, text: str) -> str:
    (repo / name).write_text(text)
    run("git", repo, "add", "-A")
    run("git", repo, "-c", "user.email=t@infrax.invalid", "-c", "user.name=t", "commit", "-q", "-m", name)
    return run("git", repo, "rev-parse", "HEAD")


async def push(infrax: Running, repo: Path, revision: str) -> dict[str, Any]:
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert pushed.status_code == 201, pushed.text
    return await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=90)


async def verdicts(infrax: Running, job_id: str) -> dict[str, tuple[str, list[tuple[int, str]]]]:
    answer = await infrax["executioner"].get("/api/v1/test-verdicts", params={"jobId": job_id})
    assert answer.status_code == 200, answer.text
    return {v["testId"]: (v["verdict"], [(r["run"], r["outcome"]) for r in v["runs"]]) for v in answer.json()}


async def test_intermittent_and_always_failing_tests_told_apart(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(rerun_failures=2)  # the installation's default
    treeherder: list[dict[str, Any]] = []

    async def collect(message: Message) -> None:
        treeherder.append(message.body)

    await infrax.stack.bus.subscribe("test-treeherder", topics.TREEHERDER, ["#"], collect)
    journal, repo = tmp_path / "journal", tmp_path / "repo"
    make_repo("git", repo, bootstrapper=bootstrapper(journal))
    flaky = add(repo, "tests/test_flaky.py", FLAKY)

    # The flaky test fails on run 0, passes when run again: intermittent, and the job passes.
    job = await push(infrax, repo, flaky)
    assert job["state"] == "completed", job
    assert "intermittent: tests/test_flaky.py::test_flaky failed, then passed on run 1" in job["message"]
    assert journal.read_text().splitlines() == [
        "0 tests/test_add.py tests/test_flaky.py",
        "1 tests/test_flaky.py::test_flaky",
    ], "the re-run ran only the failing test"
    assert await verdicts(infrax, job["id"]) == {
        "tests/test_add.py::test_add": ("passed", [(0, "passed")]),
        "tests/test_flaky.py::test_flaky": ("intermittent", [(0, "failed"), (1, "passed")]),
    }

    # A test that always fails: failed after its two re-runs, each of them running only what failed.
    broken = add(repo, "tests/test_broken.py", BROKEN)
    failed = await push(infrax, repo, broken)
    assert failed["state"] == "failed"
    assert "tests/test_broken.py::test_broken" in failed["message"] and "the same on 2 re-runs" in failed["message"]
    assert "intermittent: tests/test_flaky.py::test_flaky" in failed["message"]
    assert journal.read_text().splitlines()[2:] == [
        "0 tests/test_add.py tests/test_broken.py tests/test_flaky.py",
        "1 tests/test_broken.py::test_broken tests/test_flaky.py::test_flaky",
        "2 tests/test_broken.py::test_broken",
    ]
    found = await verdicts(infrax, failed["id"])
    assert found["tests/test_broken.py::test_broken"] == ("failed", [(0, "failed"), (1, "failed"), (2, "failed")])
    assert found["tests/test_flaky.py::test_flaky"] == ("intermittent", [(0, "failed"), (1, "passed")])
    assert found["tests/test_add.py::test_add"] == ("passed", [(0, "passed")])

    # Their history over both pushes: the flaky test intermittent twice, the broken one failed once.
    history = await infrax["executioner"].get("/api/v1/test-history", params={"project": "co-git"})
    assert history.status_code == 200, history.text
    by_test = {h["testId"]: h for h in history.json()}
    assert list(by_test) == ["tests/test_flaky.py::test_flaky", "tests/test_broken.py::test_broken"]
    flaky_history = by_test["tests/test_flaky.py::test_flaky"]
    assert (flaky_history["runs"], flaky_history["failures"], flaky_history["intermittent"]) == (4, 2, 2)
    assert by_test["tests/test_broken.py::test_broken"]["failed"] == 1
    assert by_test["tests/test_broken.py::test_broken"]["regression"] is None, "it never passed"

    # A project that turns re-runs off still runs a failure of a known intermittent test again, once.
    config = (repo / ".infrax.yml").read_text()
    (repo / "tests" / "test_broken.py").unlink()
    quiet = add(repo, ".infrax.yml", "rerunFailures: 0\n" + config)
    known = await push(infrax, repo, quiet)
    assert known["state"] == "completed" and "intermittent: tests/test_flaky.py::test_flaky" in known["message"]
    assert journal.read_text().splitlines()[5:] == [
        "0 tests/test_add.py tests/test_flaky.py",
        "1 tests/test_flaky.py::test_flaky",
    ]

    # A test that passed on every push so far and fails on this one: this push's regression.
    regressed = add(repo, "calc.py", "def add(a, b):\n    return a - b\n")
    broken_by = await push(infrax, repo, regressed)
    assert broken_by["state"] == "failed"
    found = await infrax["executioner"].get("/api/v1/test-verdicts", params={"jobId": broken_by["id"]})
    by_test = {v["testId"]: v for v in found.json()}
    assert by_test["tests/test_add.py::test_add"]["verdict"] == "failed"
    assert by_test["tests/test_add.py::test_add"]["regression"]["jobId"] == broken_by["id"]
    history = await infrax["executioner"].get(
        "/api/v1/test-history", params={"project": "co-git", "testId": "tests/test_add.py::test_add"}
    )
    assert history.json()[0]["regression"]["jobId"] == broken_by["id"]
    assert history.json()[0]["partitions"] == 4 and history.json()[0]["failed"] == 1

    # `infrax status` and `infrax tests` say so.
    config = tmp_path / "cli.yml"
    ports = {name: int(url.rsplit(":", 1)[1]) for name, url in infrax.stack.urls.items()}
    config.write_text(yaml.safe_dump({"data_dir": str(infrax.stack.config.data_dir), "ports": ports}))
    code, shown, errors = await cli("status", job["id"], "--config", str(config))
    assert code == 0 and "completed intermittent" in shown and "intermittent: tests/test_flaky.py" in shown, errors
    code, shown, errors = await cli("tests", failed["id"], "--config", str(config))
    assert code == 0, errors
    assert "1 passed, 1 failed, 1 intermittent" in shown
    assert "0: failed, 1: failed, 2: failed" in shown and "0: failed, 1: passed" in shown
    assert "new in this push" not in shown, "test_broken never passed: no regression"
    code, shown, errors = await cli("tests", broken_by["id"], "--failed", "--config", str(config))
    assert code == 0 and "failed, new in this push" in shown, (shown, errors)

    # Treeherder: each earlier run failed (orange, with its log, saying why it runs again), the
    # last its own result; none a retry, which Treeherder shows without a log; all valid.
    schema = yaml.safe_load(shared_path("reference", "treeherder", "pulse-job.yml").read_text())
    validator = jsonschema.Draft6Validator(schema, format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER)
    for body in treeherder:
        validator.validate(body)
    ended = [(b["origin"]["revision"], b["retryId"], b["result"], b) for b in treeherder if b["state"] == "completed"]
    unit = [(rev, n, result, b) for rev, n, result, b in ended if b["display"]["jobName"].startswith("unit")]
    assert [(n, result) for rev, n, result, _ in unit if rev == flaky] == [(0, "fail"), (1, "success")]
    assert [(n, result) for rev, n, result, _ in unit if rev == broken] == [(0, "fail"), (1, "fail"), (2, "fail")]
    passed = next(b for rev, n, result, b in unit if rev == flaky and result == "success")
    assert "intermittent" in passed["jobInfo"]["summary"]
    retried = next(b for rev, n, result, b in unit if rev == flaky and result == "fail")
    assert not retried.get("isRetried") and "run again as run 1" in retried["jobInfo"]["summary"]
    assert retried["logs"][0]["name"] == "live_backing_log"
    assert retried["buildMachine"]["name"] != passed["buildMachine"]["name"], "re-run on another container"
