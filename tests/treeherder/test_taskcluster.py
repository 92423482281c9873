"""A stock Treeherder's view: every partition a task on Taskcluster-queue-shaped exchanges, each
message valid against Taskcluster's own queue schemas, and the queue API it calls answering for
every task of a demo job, re-runs included."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import slugid
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT6

from infrax.bus import Message, topics
from infrax.sample_project import break_one_test, make_one_test_intermittent, make_sample_repo
from infrax.treeherder import queue_tasks as tc
from tests.conftest import shared_path
from tests.e2e.conftest import agent_pid
from tests.jobmaster.conftest import BOTH_BACKENDS, commit, git, job_in, wait_for


def _resolved(node: Any, constants: dict[str, Any]) -> Any:
    """Taskcluster's YAML dialect as plain JSON Schema: `{$const: name}` is the constant itself."""
    if isinstance(node, dict):
        if set(node) == {"$const"}:
            return _resolved(constants[node["$const"]], constants)
        return {k: _resolved(v, constants) for k, v in node.items() if k != "$schema"}
    if isinstance(node, list):
        return [_resolved(v, constants) for v in node]
    return node


@pytest.fixture(scope="module")
def queue_schemas() -> dict[str, jsonschema.Draft6Validator]:
    folder = shared_path("reference", "taskcluster", "queue-schemas")
    constants = yaml.safe_load((folder / "constants.yml").read_text())
    schemas = {p.stem: _resolved(yaml.safe_load(p.read_text()), constants) for p in (folder / "v1").glob("*.yml")}
    registry: Registry = Registry().with_resources(
        (f"{prefix}{name}.json", Resource.from_contents(schema, default_specification=DRAFT6))
        for name, schema in schemas.items()
        for prefix in ("", "./")  # both ways the schemas refer to each other
    )
    return {
        name: jsonschema.Draft6Validator(
            schema, registry=registry, format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER
        )
        for name, schema in schemas.items()
    }


@pytest.fixture(scope="module")
def treeherder_config() -> jsonschema.Draft7Validator:
    schema = yaml.safe_load(shared_path("reference", "treeherder", "task-treeherder-config.yml").read_text())
    return jsonschema.Draft7Validator(schema)


async def collecting(infrax: Any) -> list[tuple[str, str, dict[str, Any]]]:
    seen: list[tuple[str, str, dict[str, Any]]] = []

    async def collect(message: Message) -> None:
        seen.append((message.exchange, message.routing_key, message.body))

    for exchange in topics.TC_EXCHANGES:  # as Treeherder's pulse listener binds them: `#`
        await infrax.stack.bus.subscribe(f"test-{exchange.rsplit('/', 1)[1]}", exchange, ["#"], collect)
    return seen


def parse_route(route: str) -> dict[str, Any]:
    """Treeherder's route parser (treeherder/etl/taskcluster_pulse/parse_route.py), as it reads one."""
    words = route.split(".")
    project = words[2].split("/")[-1]
    return {
        "destination": words[0],
        "project": project,
        "revision": words[3],
        "id": int(words[4]) if len(words) == 5 else 0,
    }


async def test_a_demo_job_s_messages_and_queue_api_are_taskcluster_s(
    start_stack: Any,
    tmp_path: Path,
    queue_schemas: dict[str, jsonschema.Draft6Validator],
    treeherder_config: jsonschema.Draft7Validator,
) -> None:
    infrax = await start_stack()
    seen = await collecting(infrax)
    jobmaster = infrax["jobmaster"]
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo)
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert (await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception"))["state"] == "completed"

    async def three_completed() -> bool:
        return sum(1 for exchange, _, _ in seen if exchange.endswith("task-completed")) == 3

    await wait_for(three_completed, 10, "task-completed for each of the 3 partitions")
    events = [exchange.rsplit("/", 1)[1] for exchange, _, _ in seen]
    assert {e: events.count(e) for e in set(events)} == {
        "task-defined": 3,
        "task-pending": 3,
        "task-running": 3,
        "task-completed": 3,
    }
    task_ids = set()
    for exchange, key, body in seen:
        event = exchange.rsplit("/", 1)[1]
        queue_schemas[f"{event}-message"].validate(body)
        task_id = body["status"]["taskId"]
        task_ids.add(task_id)
        words = key.split(".")
        assert (
            len(words) == 10
            and words[:2] == ["primary", task_id]
            and words[5:8] == ["infrax", "linux-x86-64", "infrax"]
        )
        assert words[2] == ("_" if event == "task-defined" else str(body["runId"]))
    assert len(task_ids) == 3

    for task_id in task_ids:
        definition = (await jobmaster.get(f"/api/queue/v1/task/{task_id}")).json()
        treeherder_config.validate(definition["extra"]["treeherder"])
        (route,) = [r for r in definition["routes"] if r.startswith("tc-treeherder.")]
        assert parse_route(route) == {
            "destination": "tc-treeherder",
            "project": "sample",
            "revision": revision,
            "id": 0,
        }
        assert definition["metadata"]["owner"] == "sample@infrax.invalid" or definition["metadata"]["owner"]
        assert definition["extra"]["treeherder"]["groupSymbol"] == "U"  # the task's initials: U(u1 u2 u3)
        status = (await jobmaster.get(f"/api/queue/v1/task/{task_id}/status")).json()["status"]
        queue_schemas["task-status"].validate(status)
        assert status["state"] == "completed" and [r["state"] for r in status["runs"]] == ["completed"]
        log = await jobmaster.get(f"/api/queue/v1/task/{task_id}/runs/0/artifacts/{tc.LOG_ARTIFACT}")
        assert log.status_code == 303
        assert "running 2 test files" in (await infrax["executioner"].get(log.headers["location"])).text
    assert (await jobmaster.get("/api/queue/v1/task/AAAAAAAAQAaAAAAAAAAAAA")).status_code == 404
    assert (await jobmaster.get("/api/queue/v1/task/not-a-slug")).status_code == 404
    assert (await jobmaster.get(f"/api/queue/v1/task/{task_id}/runs/5/artifacts/{tc.LOG_ARTIFACT}")).status_code == 404


async def test_a_dependent_not_yet_planned_is_a_pending_task_then_superseded_by_its_partitions(
    start_stack: Any,
    tmp_path: Path,
    queue_schemas: dict[str, jsonschema.Draft6Validator],
    treeherder_config: jsonschema.Draft7Validator,
) -> None:
    """Build → unit: until the build ends, `unit` has no partitions, so a stock Treeherder would
    show nothing of it; it sees a pending task standing for it, resolved `superseded` (Treeherder's
    result of that name) once the partitions are tasks of their own."""
    infrax = await start_stack()
    seen = await collecting(infrax)
    jobmaster = infrax["jobmaster"]
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo, build=True)
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    job = await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception")
    assert job["state"] == "completed"
    unit = next(t for t in job["tasks"] if t["name"] == "unit")
    placeholder = str(slugid.encode(uuid.UUID(hex=unit["id"])))

    async def all_resolved() -> bool:
        ends = [b for e, _, b in seen if e.rsplit("-", 1)[1] in ("completed", "exception")]
        return len(ends) == 5  # the build, the 3 unit partitions and the placeholder

    await wait_for(all_resolved, 10, "every task's last message")
    for exchange, _, body in seen:
        queue_schemas[f"{exchange.rsplit('/', 1)[1]}-message"].validate(body)
    mine = [(e.rsplit("/", 1)[1], b) for e, _, b in seen if b["status"]["taskId"] == placeholder]
    assert [e for e, _ in mine] == ["task-defined", "task-pending", "task-exception"]
    pending_at = next(i for i, (e, _, b) in enumerate(seen) if b["status"]["taskId"] == placeholder)
    request = await infrax.request(job["requestId"])
    unit_partitions = {p.id for t in request.tasks if t.name == "unit" for p in t.partitions}
    assert len(unit_partitions) == 3
    first_unit = min(i for i, (_, _, b) in enumerate(seen) if tc.partition_id(b["status"]["taskId"]) in unit_partitions)
    assert pending_at < first_unit  # shown before any of its partitions existed
    assert mine[-1][1]["status"]["runs"][0]["reasonResolved"] == "superseded"
    definition = (await jobmaster.get(f"/api/queue/v1/task/{placeholder}")).json()
    treeherder_config.validate(definition["extra"]["treeherder"])
    # A job of no group while it waits: never one more symbol beside its chunks.
    assert (definition["extra"]["treeherder"]["groupSymbol"], definition["extra"]["treeherder"]["symbol"]) == ("?", "u")
    assert definition["metadata"]["name"] == "unit (not planned yet)"
    status = (await jobmaster.get(f"/api/queue/v1/task/{placeholder}/status")).json()["status"]
    queue_schemas["task-status"].validate(status)
    assert [(r["state"], r["reasonResolved"]) for r in status["runs"]] == [("exception", "superseded")]
    assert status["runs"][0]["started"] == status["runs"][0]["resolved"]  # Treeherder would show 1970 without


async def test_a_lost_run_is_resolved_worker_shutdown_and_its_retry_answers_in_the_queue_api(
    start_stack: Any, tmp_path: Path, queue_schemas: dict[str, jsonschema.Draft6Validator]
) -> None:
    infrax = await start_stack()
    seen = await collecting(infrax)
    agents = tmp_path / "agents"
    once = tmp_path / "once.sh"
    once.write_text(f"#!/bin/sh\necho $INFRAX_WORK_DIR >> {agents}\n[ $INFRAX_RUN = 0 ] && sleep 60\nexit 0\n")
    once.chmod(0o755)
    repo = tmp_path / "once"
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "author@infrax.invalid")
    git(repo, "config", "user.name", "a")
    commit(
        repo,
        {
            ".infrax.yml": "version: 1\nproject: once\ntasks:\n"
            f"  - {{name: once, containerTag: linux_x86_64, bootstrapper: {once}, files: [a.py], retries: 1}}\n"
        },
        "once",
    )
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
    assert pushed.status_code == 201, pushed.text

    async def started() -> bool:
        return agents.exists() and len(agents.read_text().split()) >= 1

    await wait_for(started, 20, "the first run to start")
    os.kill(agent_pid(agents.read_text().split()[0]), signal.SIGKILL)
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception", timeout=30)
    assert job["state"] == "completed"

    async def completed() -> bool:
        return any(exchange.endswith("task-completed") for exchange, _, _ in seen)

    await wait_for(completed, 10, "task-completed of the re-run")
    for exchange, _, body in seen:
        queue_schemas[f"{exchange.rsplit('/', 1)[1]}-message"].validate(body)
    lost = next(body for exchange, _, body in seen if exchange.endswith("task-exception"))
    assert lost["runId"] == 0 and lost["status"]["runs"][0]["reasonResolved"] == "worker-shutdown"
    assert lost["status"]["runs"][0]["started"] and lost["status"]["runs"][0]["resolved"]
    task_id = lost["status"]["taskId"]
    assert slugid.decode(task_id)
    status = (await infrax["jobmaster"].get(f"/api/queue/v1/task/{task_id}/status")).json()["status"]
    queue_schemas["task-status"].validate(status)
    assert [(r["runId"], r["state"], r["reasonCreated"]) for r in status["runs"]] == [
        (0, "exception", "scheduled"),
        (1, "completed", "retry"),
    ]
    definition = (await infrax["jobmaster"].get(f"/api/queue/v1/task/{task_id}")).json()
    assert definition["metadata"]["owner"] == "author@infrax.invalid"  # no pusher: the commit's author
    for run in (0, 1):
        log = await infrax["jobmaster"].get(f"/api/queue/v1/task/{task_id}/runs/{run}/artifacts/{tc.LOG_ARTIFACT}")
        assert log.status_code == 303, (run, log.text)


async def test_every_url_handed_out_starts_with_the_public_url(start_stack: Any, tmp_path: Path) -> None:
    infrax = await start_stack(public_url="https://ci.example.org/")
    seen = await collecting(infrax)
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo)
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception")
    # Its bootstrapper, a file of the repository named under the public URL, was read from the job
    # master itself with the run's token (the proxy is not even reachable here).
    assert job["state"] == "completed", job
    request = (await infrax["scheduler"].get(f"/api/v1/task-requests/{job['requestId']}")).json()
    log_urls = [p["logUrl"] for t in request["tasks"] for p in t["partitions"]]
    assert log_urls and all(u.startswith("https://ci.example.org/api/v1/runs/") for u in log_urls), log_urls
    task_id = seen[0][2]["status"]["taskId"]
    definition = (await infrax["jobmaster"].get(f"/api/queue/v1/task/{task_id}")).json()
    assert definition["metadata"]["source"] == f"https://ci.example.org/jobs/{job['id']}"  # the dashboard's page
    # Requests the proxy forwards with the public host name are answered (the Host check knows it).
    through_proxy = await infrax["jobmaster"].get(f"/api/queue/v1/task/{task_id}", headers={"Host": "ci.example.org"})
    assert through_proxy.status_code == 200, through_proxy.text


def treeherder_error_lines(log: str) -> list[str]:
    """The lines of a log Treeherder's error parser keeps (treeherder/log_parser/parsers.py,
    ErrorParser), for the terms a pytest or unittest run's log can hold."""
    return [line for line in log.splitlines() if "TEST-UNEXPECTED-" in line and "TEST-PASS " not in line]


@BOTH_BACKENDS
async def test_a_failure_is_orange_with_its_log_and_failing_test_and_an_intermittent_is_orange_then_green(
    start_stack: Any, tmp_path: Path, queue_schemas: dict[str, jsonschema.Draft6Validator]
) -> None:
    infrax = await start_stack(rerun_failures=2)
    seen = await collecting(infrax)
    jobmaster = infrax["jobmaster"]
    repo = tmp_path / "sample"
    make_sample_repo(repo)
    broken = break_one_test(repo, 2)
    git(repo, "checkout", "--quiet", "HEAD~1")
    flaky = make_one_test_intermittent(repo, 3)
    jobs = {}
    for name, revision in (("broken", broken), ("flaky", flaky)):
        pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
        assert pushed.status_code == 201, pushed.text
        jobs[name] = await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception", timeout=60)
    assert (jobs["broken"]["state"], jobs["flaky"]["state"]) == ("failed", "completed")

    async def all_reported() -> bool:  # the broken partition's 3 runs and the flaky one's 2 end
        ends = [e for e, _, _ in seen if e.endswith(("task-failed", "task-completed"))]
        return len(ends) >= 3 + 3 + 3

    await wait_for(all_reported, 20, "every run's end")
    for exchange, _, body in seen:
        queue_schemas[f"{exchange.rsplit('/', 1)[1]}-message"].validate(body)
    failed = [body for exchange, _, body in seen if exchange.endswith("task-failed")]
    runs_of = {body["status"]["taskId"]: body["status"]["runs"] for body in failed}
    broken_task, flaky_task = sorted(runs_of, key=lambda t: len(runs_of[t]), reverse=True)
    # Treeherder: three orange jobs for the real failure (the run and its two re-runs), each with its log ...
    status = (await jobmaster.get(f"/api/queue/v1/task/{broken_task}/status")).json()["status"]
    assert [(r["state"], r["reasonCreated"], r["reasonResolved"]) for r in status["runs"]] == [
        ("failed", "scheduled", "failed"),
        ("failed", "rerun", "failed"),
        ("failed", "rerun", "failed"),
    ]
    # ... and one orange then one green for the intermittent.
    status = (await jobmaster.get(f"/api/queue/v1/task/{flaky_task}/status")).json()["status"]
    assert [(r["state"], r["reasonCreated"]) for r in status["runs"]] == [
        ("failed", "scheduled"),
        ("completed", "rerun"),
    ]

    for task_id, test in ((broken_task, "test_mul_2"), (flaky_task, "test_mul_3")):
        listed = await jobmaster.get(f"/api/queue/v1/task/{task_id}/runs/0/artifacts")
        queue_schemas["list-artifacts-response"].validate(listed.json())
        assert listed.headers["access-control-allow-origin"] == "*"  # Treeherder's UI lists them from its origin
        names = [a["name"] for a in listed.json()["artifacts"]]
        assert tc.LOG_ARTIFACT in names
        # Treeherder's job loader takes an artifact whose name ends with _errorsummary.log as the errorsummary.
        (summary_name,) = [n for n in names if n.rsplit("/", 1)[-1].endswith("_errorsummary.log")]
        redirect = await jobmaster.get(f"/api/queue/v1/task/{task_id}/runs/0/artifacts/{summary_name}")
        assert redirect.status_code == 303 and redirect.headers["access-control-allow-origin"] == "*"
        summary = await infrax["executioner"].get(redirect.headers["location"])
        assert summary.status_code == 200 and summary.headers["access-control-allow-origin"] == "*"
        lines = [json.loads(line) for line in summary.text.splitlines()]
        results = [line for line in lines if line["action"] == "test_result"]
        assert len(results) == 1 and test in results[0]["test"] and results[0]["status"] == "FAIL"
        assert all(isinstance(line["line"], int) for line in lines)  # what Treeherder's failure_line needs
        log_redirect = await jobmaster.get(f"/api/queue/v1/task/{task_id}/runs/0/artifacts/{tc.LOG_ARTIFACT}")
        log = await infrax["executioner"].get(log_redirect.headers["location"])
        assert log.headers["access-control-allow-origin"] == "*"
        (error_line,) = treeherder_error_lines(log.text)
        assert error_line.startswith("TEST-UNEXPECTED-FAIL | ") and test in error_line

    # Bad names are refused, not redirected elsewhere on the executioner.
    for bad in ("public/a/%2E%2E/%2E%2E/%2E%2E/metrics", "private/x.log", "public/"):
        refused = await jobmaster.get(f"/api/queue/v1/task/{broken_task}/runs/0/artifacts/{bad}")
        assert refused.status_code == 404 and "location" not in refused.headers, (bad, refused.text)
    assert (await jobmaster.get(f"/api/queue/v1/task/{broken_task}/runs/9/artifacts/public/x")).status_code == 404

    # "Inspect task": the partition's page on the dashboard.
    inspect = await jobmaster.get(f"/tasks/{broken_task}")
    assert inspect.status_code == 303
    assert inspect.headers["location"].endswith(f"/partitions/{slugid.decode(broken_task).hex}")
    assert (await jobmaster.get("/tasks/AAAAAAAAQAaAAAAAAAAAAA")).status_code == 404
