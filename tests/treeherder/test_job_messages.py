"""Treeherder: every partition change of a job is a pulse job message that Treeherder's schema accepts."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from infrax.bus import Message, topics
from infrax.bus.messages import PartitionStatus
from infrax.model import TaskPartition
from infrax.sample_project import break_one_test, make_sample_repo
from infrax.treeherder.reporter import owner, pulse_jobs
from infrax.treeherder.task_runs import TcRun, TcTask, advance
from tests.e2e.conftest import agent_pid
from tests.jobmaster.conftest import commit, git, job_in, pulse_job_schema, wait_for

GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/\d+$")


@pytest.fixture
def validator() -> jsonschema.Draft6Validator:
    schema = pulse_job_schema()
    jsonschema.Draft6Validator.check_schema(schema)
    return jsonschema.Draft6Validator(schema, format_checker=jsonschema.Draft6Validator.FORMAT_CHECKER)


async def collecting(infrax: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []

    async def collect(message: Message) -> None:
        messages.append(message.body)

    await infrax.stack.bus.subscribe("test-treeherder", topics.TREEHERDER, ["#"], collect)
    return messages


def by_run(messages: list[dict[str, Any]], revision: str) -> dict[str, list[tuple[str, str]]]:
    runs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for m in messages:
        if m["origin"]["revision"] == revision:
            runs[m["taskId"]].append((m["state"], m["result"]))
    return runs


async def test_every_message_of_a_demo_job_validates_and_a_failing_partition_fails(
    start_stack, tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    infrax = await start_stack()
    messages = await collecting(infrax)
    jobmaster = infrax["jobmaster"]
    repo = tmp_path / "sample"
    good = make_sample_repo(repo)

    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": good})
    assert pushed.status_code == 201, pushed.text
    assert (await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception"))["state"] == "completed"

    async def all_completed() -> bool:
        runs = by_run(messages, good)
        return len(runs) == 3 and all(states[-1][0] == "completed" for states in runs.values())

    await wait_for(all_completed, 10, "a final message for each of the 3 partitions")
    for message in messages:
        validator.validate(message)
        assert GUID.match(message["taskId"]) and message["retryId"] == 0
        assert message["display"]["groupSymbol"] == "U" and message["origin"]["project"] == "sample"
        if message["state"] in ("running", "completed"):
            assert message["logs"][0]["url"].startswith(str(infrax["executioner"].base_url))
    for states in by_run(messages, good).values():
        assert states[0] == ("pending", "unknown") and ("running", "unknown") in states
        assert states[-1] == ("completed", "success")
    final = next(m for m in messages if m["state"] == "completed")
    log = (await infrax["executioner"].get(final["logs"][0]["url"])).text
    assert "running 2 test files at " + good in log

    bad = break_one_test(repo)
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo), "revision": bad})
    job = await job_in(jobmaster, pushed.json()["id"], "completed", "failed", "exception")
    assert job["state"] == "failed"
    # What failed, said by the partition, its task and its job (infrax.failures).
    what = "1 test failed: tests/test_2.py::Test2::test_mul_2 (AssertionError: 4 != 5)"
    request = await infrax.request(job["requestId"])
    (part,) = [p for p in request.tasks[0].partitions if p.state == "failed"]
    assert part.message == f"exited with code 1: {what}", part.message
    (task,) = job["tasks"]
    assert task["message"] == f"partition {part.index}/3: {part.message}"
    assert job["message"] == f"task unit: {task['message']}"

    async def bad_completed() -> dict[str, list[tuple[str, str]]] | None:
        runs = by_run(messages, bad)
        return runs if len(runs) == 3 and all(s[-1][0] == "completed" for s in runs.values()) else None

    runs = await wait_for(bad_completed, 10, "the failing job's final messages")
    assert sorted(states[-1][1] for states in runs.values()) == ["fail", "success", "success"]
    failed = next(m for m in messages if m["origin"]["revision"] == bad and m.get("result") == "fail")
    validator.validate(failed)
    assert "AssertionError: 4 != 5" in (await infrax["executioner"].get(failed["logs"][0]["url"])).text
    assert failed["jobInfo"]["summary"] == part.message


async def test_an_agent_loss_is_a_retry_and_then_an_exception(
    start_stack, tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    infrax = await start_stack()
    messages = await collecting(infrax)
    agents = tmp_path / "agents"
    doomed = tmp_path / "doomed.sh"
    doomed.write_text(f"#!/bin/sh\necho $INFRAX_WORK_DIR >> {agents}\nsleep 60\n")
    doomed.chmod(0o755)
    repo = tmp_path / "doomed"
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    revision = commit(
        repo,
        {
            ".infrax.yml": f"""version: 1
project: doomed
tasks:
  - {{name: doomed, containerTag: linux_x86_64, bootstrapper: {doomed}, files: [a.py], retries: 1}}
"""
        },
        "doomed",
    )

    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
    assert pushed.status_code == 201, pushed.text
    for attempt in (1, 2):
        await wait_for(lambda n=attempt: _started(agents, n), 20, f"run {attempt - 1} to start")
        os.kill(agent_pid(agents.read_text().split()[attempt - 1]), signal.SIGKILL)
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "exception", "completed", "failed", timeout=30)
    assert job["state"] == "exception"

    async def exception_reported() -> bool:
        return any(m.get("result") == "exception" for m in messages)

    await wait_for(exception_reported, 10, "the exception message")
    for message in messages:
        validator.validate(message)
    runs = by_run(messages, revision)
    ((first, second),) = [sorted(g) for g in _by_partition(runs).values()]
    assert first.endswith("/0") and second.endswith("/1")
    assert runs[first][-1] == ("completed", "retry")
    assert runs[second][0] == ("pending", "unknown") and runs[second][-1] == ("completed", "exception")
    retry = next(m for m in messages if m["taskId"] == first and m["result"] == "retry")
    assert retry["isRetried"] is True and retry["retryId"] == 0 and retry["logs"]


async def _started(agents: Path, count: int) -> bool:
    return agents.exists() and len(agents.read_text().split()) >= count


def _by_partition(runs: dict[str, Any]) -> dict[str, list[str]]:
    partitions: dict[str, list[str]] = defaultdict(list)
    for guid in runs:
        partitions[guid.split("/")[0]].append(guid)
    return partitions


# -- the mapping alone ----------------------------------------------------------------------------

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def status(state: str, run: int = 0, previous: str | None = "running", **fields: Any) -> PartitionStatus:
    partition = TaskPartition(
        id="0123456789abcdef0123456789abcdef",
        task_id="t",
        request_id="r",
        job_id="j",
        index=2,
        count=4,
        files=["a.py"],
        container_type="linux_x86_64",
        state=state,
        run=run,
        priority=0,
        log_url="http://127.0.0.1:7314/api/v1/runs/0123456789abcdef0123456789abcdef-0/log",
        **{"queued_at": NOW, **fields},
    )
    return PartitionStatus(
        previous_state=previous,
        task_name="mochitest-browser-chrome-with-a-long-name",
        project="my.project",
        revision="a" * 40,
        partition=partition,
    )


JOB = {
    "project": "my.project",
    "revision": "a" * 40,
    "url": "http://127.0.0.1:7310/api/v1/jobs/j",
    "id": 7,
    "owner": "octocat",
    "retries": {},
}
TASK = TcTask(
    "0123456789abcdef0123456789abcdef",
    "j",
    "r" * 32,
    "t",
    "mochitest-browser-chrome-with-a-long-name",
    2,
    4,
    "linux_x86_64",
    NOW,
)


def made(*statuses: PartitionStatus) -> list[list[dict[str, Any]]]:
    """The pulse job messages each status makes, one partition's statuses in order."""
    runs: list[TcRun] = []
    out = []
    for one in statuses:
        events, _ = advance(runs, one, NOW)
        out.append([body for event, run in events for body in pulse_jobs(event, TASK, run, JOB)])
    return out


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ("queued", []),  # a repeat of the first
        ("dispatched", []),  # Treeherder knows no dispatched: still pending
        ("running", [("running", "unknown")]),
        ("completed", [("completed", "success")]),
        ("failed", [("completed", "fail")]),
        ("exception", [("completed", "exception")]),
        ("cancelled", [("completed", "canceled")]),
        ("skipped", []),
    ],
)
def test_states_map_to_treeherder_states_and_results(
    state: str, expected: list[tuple[str, str]], validator: jsonschema.Draft6Validator
) -> None:
    first, then = made(status("queued", previous=None), status(state, started_at=NOW, finished_at=NOW, message="why"))
    assert [(m["state"], m["result"]) for m in first] == [("pending", "unknown")]
    assert [(m["state"], m["result"]) for m in then] == expected
    for message in first + then:
        validator.validate(message)
        assert message["taskId"] == "01234567-89ab-cdef-0123-456789abcdef/0"
        assert message["origin"] == {"project": "my-project", "revision": "a" * 40, "id": 7}
        assert message["owner"] == "octocat"
        assert message["display"]["groupSymbol"] == "MBCWALN"  # the task's initials; its name is groupName
        assert message["display"]["groupName"] == "mochitest-browser-chrome-with-a-long-name"
        # Treeherder shows jobSymbol and chunkId together: mbcwaln2, not 22
        assert (message["display"]["jobSymbol"], message["display"]["chunkId"]) == ("mbcwaln", 2)
        assert message["display"]["chunkCount"] == 4
        assert message["timeScheduled"] == NOW.isoformat()
    for message in then:
        if message["state"] == "completed":
            assert message["timeStarted"] == message["timeCompleted"] == NOW.isoformat()


def test_a_requeued_partition_retries_the_lost_run_with_its_times_and_is_pending_as_the_next(
    validator: jsonschema.Draft6Validator,
) -> None:
    later = NOW + timedelta(seconds=30)
    _, (running,), (retry, pending) = made(
        status("queued", previous=None),
        status("running", started_at=NOW + timedelta(seconds=1), container_id="c-1"),
        status("queued", run=1, previous="running", queued_at=later),
    )
    assert (retry["taskId"].endswith("/0"), retry["state"], retry["result"], retry["isRetried"]) == (
        True,
        "completed",
        "retry",
        True,
    )
    # The lost run keeps every time it had: Treeherder overwrites a job's times with each message.
    assert retry["timeScheduled"] == NOW.isoformat() and retry["timeStarted"] == running["timeStarted"]
    assert retry["timeCompleted"] == later.isoformat() and retry["logs"] == running["logs"]
    assert (pending["taskId"].endswith("/1"), pending["state"], pending["retryId"]) == (True, "pending", 1)
    assert pending["timeScheduled"] == later.isoformat() and "logs" not in pending
    for message in (running, retry, pending):
        validator.validate(message)


def test_a_failed_run_that_is_re_run_stays_failed_with_its_log_and_the_next_is_a_rerun(
    validator: jsonschema.Draft6Validator,
) -> None:
    """An intermittent: run 0 fails, its failures re-run as run 1, which passes. Treeherder shows
    an orange job with its log, then a green one, not a logless purple retry."""
    later = NOW + timedelta(seconds=30)
    runs: list[TcRun] = []
    steps = [
        status("queued", previous=None),
        status("running", started_at=NOW + timedelta(seconds=1), container_id="c-1"),
        status("queued", run=1, previous="running", queued_at=later, failure_reruns=1, message="run 0 failed"),
        status("running", run=1, started_at=later, container_id="c-2", failure_reruns=1),
        status("completed", run=1, started_at=later, finished_at=later, failure_reruns=1),
    ]
    events = [event for one in steps for event, _run in advance(runs, one, NOW)[0]]
    assert events == ["defined", "pending", "running", "failed", "pending", "running", "completed"]
    assert [(r.state, r.reason_created, r.reason_resolved) for r in runs] == [
        ("failed", "scheduled", "failed"),
        ("completed", "rerun", "completed"),
    ]
    failed = pulse_jobs("failed", TASK, runs[0], JOB)[0]
    validator.validate(failed)
    assert (failed["state"], failed["result"], failed.get("isRetried")) == ("completed", "fail", None)
    assert failed["logs"] == [{"name": "live_backing_log", "url": runs[0].log_url}]
    assert failed["timeCompleted"] == later.isoformat() and failed["jobInfo"]["summary"] == "run 0 failed"
    # A run lost after a re-run of failures is a retry, and the re-run before it was not lost.
    more = [
        status("queued", run=1, previous="completed", queued_at=later, failure_reruns=1),
        status("queued", run=2, previous="running", queued_at=later, failure_reruns=1),
    ]
    runs = runs[:1] + [TcRun(TASK.partition_id, 1, "running", "rerun", later, started=later)]
    for one in more:
        advance(runs, one, NOW)
    assert [(r.state, r.reason_created, r.reason_resolved) for r in runs] == [
        ("failed", "scheduled", "failed"),
        ("exception", "rerun", "worker-shutdown"),
        ("pending", "retry", None),
    ]


def test_the_owner_is_the_pusher_else_the_author_else_the_build_system() -> None:
    assert owner("octocat", "a@example.org", "infrax") == "octocat"
    assert owner(None, "a@example.org", "infrax") == "a@example.org"
    assert owner(" ", None, "infrax") == "infrax"


async def test_reports_of_one_partition_keep_their_order_while_others_go_ahead() -> None:
    from infrax.treeherder.reporter import TreeherderReporter

    reporter = TreeherderReporter(jobmaster=None)  # type: ignore[arg-type]  # _report is replaced below
    reported: list[tuple[str, str]] = []
    first_may_finish = asyncio.Event()

    async def report(message: Message) -> None:
        partition = message.body["partition"]
        if (partition["id"], partition["state"]) == ("p1", "queued"):
            await first_may_finish.wait()  # a slow report, e.g. the job master's database
        reported.append((partition["id"], partition["state"]))

    reporter._report = report  # type: ignore[method-assign]

    def news(partition_id: str, state: str) -> Message:
        return Message(topics.PARTITIONS, "k", {"partition": {"id": partition_id, "state": state}}, False, {})

    # As the bus starts handlers: in queue order, all at once (prefetch > 1).
    handlers = [
        asyncio.create_task(reporter._on_partition_status(news(p, s)))
        for p, s in [("p1", "queued"), ("p1", "running"), ("p2", "queued"), ("p1", "completed")]
    ]

    async def p2_reported() -> bool:
        return ("p2", "queued") in reported

    await wait_for(p2_reported, timeout=5, what="p2's report")
    assert reported == [("p2", "queued")]  # p1's later news waits for its first
    first_may_finish.set()
    await asyncio.gather(*handlers)
    assert [r for r in reported if r[0] == "p1"] == [("p1", "queued"), ("p1", "running"), ("p1", "completed")]
    assert reporter._reporting == {}


@pytest.mark.parametrize("revision", [None, "abc"])
async def test_partitions_without_a_job_revision_are_not_reported(revision: str | None) -> None:
    from infrax.treeherder.reporter import TreeherderReporter

    # No job master: reporting anything would need it (AttributeError), so returning is the proof.
    reporter = TreeherderReporter(jobmaster=None)  # type: ignore[arg-type]
    body = status("running").model_copy(update={"revision": revision}).model_dump(mode="json", by_alias=True)
    await reporter._report(Message(topics.PARTITIONS, "k", body, False, {}))


async def test_a_dependent_not_yet_planned_is_an_unscheduled_job_until_its_partitions_are_jobs(
    start_stack, tmp_path: Path, validator: jsonschema.Draft6Validator
) -> None:
    infrax = await start_stack()
    messages = await collecting(infrax)
    repo = tmp_path / "sample"
    revision = make_sample_repo(repo, build=True)
    pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo), "revision": revision})
    assert pushed.status_code == 201, pushed.text
    job = await job_in(infrax["jobmaster"], pushed.json()["id"], "completed", "failed", "exception")
    assert job["state"] == "completed"
    unit = next(t for t in job["tasks"] if t["name"] == "unit")

    async def all_final() -> dict[str, list[tuple[str, str]]] | None:
        runs = by_run(messages, revision)
        return runs if len(runs) == 5 and all(s[-1][0] == "completed" for s in runs.values()) else None

    runs = await wait_for(all_final, 10, "the build's, the placeholder's and the 3 unit partitions' last messages")
    for message in messages:
        validator.validate(message)
    placeholder = f"{uuid.UUID(hex=unit['id'])}/0"
    assert runs[placeholder] == [("unscheduled", "unknown"), ("completed", "superseded")]
    shown = next(m for m in messages if m["taskId"] == placeholder)
    assert shown["display"]["jobName"] == "unit (after build)" and shown["display"]["groupSymbol"] == "?"
    assert sorted(s[-1][1] for guid, s in runs.items() if guid != placeholder) == ["success"] * 4
