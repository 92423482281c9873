"""Task graphs in the scheduler: dependents wait pending, are planned when their dependencies end as
they require, or are cancelled naming the dependency; their offers say where to fetch from."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from infrax.bus.messages import RequestStatus, TaskStatus
from infrax.model import State, TaskRequestSubmission
from tests.scheduler.conftest import Harness, definition, news

S = State


def tasks_of(request) -> dict[str, S]:  # type: ignore[no-untyped-def]
    return {t.name: t.state for t in request.tasks}


async def finish(harness: Harness, task: str, state: str = "completed") -> None:
    """Dispatch what is queued and end every offered run of `task`."""
    await harness.dispatch()
    offers = [o for o in harness.provisioner.offers if o.task_name == task]
    await harness.news(*(news(o, state, exit_code=0 if state == "completed" else 1) for o in offers))


async def test_a_dependent_waits_pending_then_is_planned_and_fetches_from_the_build(harness: Harness) -> None:
    build = definition("build")
    test = definition("test", files=4, depends_on=["build"], fetches=[{"task": "build", "artifact": "dist/app.tar.gz"}])
    request = await harness.submit(build, test)
    assert tasks_of(request) == {"build": S.QUEUED, "test": S.PENDING}
    assert request.state == S.QUEUED
    assert request.tasks[1].partitions == [], "a dependent not yet planned has no partitions"

    await harness.dispatch()
    assert {o.task_name for o in harness.provisioner.offers} == {"build"}, "nothing of the tests runs first"
    [build_offer] = harness.provisioner.offers
    await harness.news(news(build_offer, "completed", exit_code=0))
    middle = await harness.scheduler.get_request(request.id)
    assert tasks_of(middle) == {"build": S.COMPLETED, "test": S.PENDING}
    assert middle.state == S.RUNNING, "not completed while a dependent waits"

    assert await harness.scheduler.plan_next()
    planned = await harness.scheduler.get_request(request.id)
    assert tasks_of(planned) == {"build": S.COMPLETED, "test": S.QUEUED}
    assert len(planned.tasks[1].partitions) == 4

    await harness.dispatch()
    tests = [o for o in harness.provisioner.offers if o.task_name == "test"]
    assert len(tests) == 4
    assert all(
        [(f.task, f.artifact, f.run_ids) for f in o.fetches] == [("build", "dist/app.tar.gz", [build_offer.run_id])]
        for o in tests
    )
    await harness.news(*(news(o, "completed", exit_code=0) for o in tests))
    assert (await harness.scheduler.get_request(request.id)).state == S.COMPLETED


async def test_a_failed_build_cancels_its_tests_down_the_graph_naming_it(harness: Harness) -> None:
    request = await harness.submit(
        definition("build"),
        definition("test", depends_on=["build"]),
        definition("report", depends_on=["test"]),
        definition("cleanup", depends_on=["test"], requires="all-finished"),
    )
    harness.forget_events()
    await finish(harness, "build", "failed")

    ended = await harness.scheduler.get_request(request.id)
    assert tasks_of(ended) == {"build": S.FAILED, "test": S.CANCELLED, "report": S.CANCELLED, "cleanup": S.PENDING}
    assert ended.tasks[1].message == "not run: its dependency 'build' ended failed"
    assert ended.tasks[2].message == "not run: its dependency 'test' ended cancelled"
    cancelled = [(e.name, e.previous_state, e.state) for e in harness.events() if isinstance(e, TaskStatus)]
    assert ("test", S.PENDING, S.CANCELLED) in cancelled and ("report", S.PENDING, S.CANCELLED) in cancelled

    # `all-finished`: it runs once what it depends on has ended, however it ended.
    assert await harness.scheduler.plan_next()
    await finish(harness, "cleanup")
    done = await harness.scheduler.get_request(request.id)
    assert done.state == S.FAILED and tasks_of(done)["cleanup"] == S.COMPLETED
    assert [e.state for e in harness.events() if isinstance(e, RequestStatus)][-1] == S.FAILED


async def test_a_dependent_of_two_is_planned_once_both_have_ended(harness: Harness) -> None:
    request = await harness.submit(
        definition("linux"), definition("mac"), definition("summary", depends_on=["linux", "mac"])
    )
    await finish(harness, "linux")
    assert not await harness.scheduler.plan_next(), "one of its two dependencies has ended"
    await finish(harness, "mac")
    assert await harness.scheduler.plan_next()
    assert tasks_of(await harness.scheduler.get_request(request.id))["summary"] == S.QUEUED
    assert not await harness.scheduler.plan_next(), "planned once"


async def test_cancelling_a_request_cancels_its_waiting_dependents(harness: Harness) -> None:
    request = await harness.submit(definition("build"), definition("test", depends_on=["build"]))
    cancelled = await harness.scheduler.cancel_request(request.id)
    assert tasks_of(cancelled) == {"build": S.CANCELLED, "test": S.CANCELLED}
    assert not await harness.scheduler.plan_next()


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        (
            [definition("a", depends_on=["b"]), definition("b", depends_on=["c"]), definition("c", depends_on=["a"])],
            "dependsOn: the tasks form a cycle: ",
        ),
        ([definition("a", depends_on=["nope"])], "tasks.0.dependsOn: task 'a' depends on 'nope', which is not a task"),
        ([definition("a", depends_on=["a"])], "task 'a' depends on itself"),
        (
            [definition("a"), definition("b", fetches=[{"task": "a", "artifact": "x"}])],
            "tasks.1.fetches.0: task 'b' fetches from 'a', which is not in its dependsOn",
        ),
        (
            [definition("a"), definition("b", depends_on=["a"], fetches=[{"task": "a", "artifact": "../../etc"}])],
            "tasks.1.fetches.0.artifact: artifact name '../../etc' is not a plain relative path",
        ),
        ([definition("a"), definition("a"), definition("b", depends_on=["a"])], "'a' names 2 tasks"),
    ],
)
def test_unknown_names_cycles_and_bad_fetches_are_refused_naming_them(tasks: list, expected: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValidationError) as refused:
        TaskRequestSubmission(tasks=tasks)
    assert expected in str(refused.value)
