"""How partitions' states roll up into their task's and the tasks' into their request's."""

from __future__ import annotations

import pytest

from infrax.bus.messages import RequestStatus, TaskStatus
from infrax.model import State, TaskRequestSubmission
from infrax.scheduler.aggregate import aggregate
from tests.scheduler.conftest import Harness, definition, news

S = State


@pytest.mark.parametrize(
    ("parts", "whole"),
    [
        ([], S.COMPLETED),
        ([S.PENDING, S.PENDING], S.PENDING),
        ([S.QUEUED, S.PENDING], S.QUEUED),
        ([S.QUEUED, S.QUEUED], S.QUEUED),
        ([S.QUEUED, S.DISPATCHED], S.RUNNING),
        ([S.QUEUED, S.RUNNING], S.RUNNING),
        ([S.QUEUED, S.COMPLETED], S.RUNNING),  # begun: part of it is done
        ([S.FAILED, S.RUNNING], S.RUNNING),  # failed only once nothing of it still runs
        ([S.COMPLETED, S.COMPLETED], S.COMPLETED),
        ([S.COMPLETED, S.FAILED], S.FAILED),
        ([S.FAILED, S.CANCELLED], S.FAILED),
        ([S.CANCELLED, S.COMPLETED], S.CANCELLED),
        ([S.EXCEPTION, S.FAILED, S.CANCELLED], S.EXCEPTION),  # the worst outcome wins
        ([S.SKIPPED, S.SKIPPED], S.SKIPPED),
        ([S.SKIPPED, S.COMPLETED], S.COMPLETED),
    ],
)
def test_the_whole_from_its_parts(parts: list[State], whole: State) -> None:
    assert aggregate(parts) == whole
    assert aggregate(list(reversed(parts))) == whole


def test_an_empty_whole_keeps_the_state_it_is_given() -> None:
    assert aggregate([], empty=S.PENDING) == S.PENDING


def rolled_up(harness: Harness) -> list[tuple[str, State | None, State]]:
    """(task name or "request", previous, new) of every task and request status published."""
    out: list[tuple[str, State | None, State]] = []
    for event in harness.events():
        if isinstance(event, TaskStatus):
            out.append((event.name, event.previous_state, event.state))
        elif isinstance(event, RequestStatus):
            out.append(("request", event.previous_state, event.state))
    return out


async def test_partitions_roll_up_into_their_task_and_tasks_into_the_request(harness: Harness) -> None:
    request = await harness.submit(definition("unit", files=2), definition("lint", files=1))
    assert [t.state for t in request.tasks] == [S.QUEUED, S.QUEUED] and request.state == S.QUEUED
    await harness.dispatch()
    offers = {(o.task_name, o.index): o for o in harness.provisioner.offers}
    assert (await harness.scheduler.get_request(request.id)).state == S.QUEUED  # dispatched is not begun
    harness.forget_events()

    await harness.news(news(offers[("unit", 1)], "running"))
    assert rolled_up(harness) == [("unit", S.QUEUED, S.RUNNING), ("request", S.QUEUED, S.RUNNING)]
    harness.forget_events()

    await harness.news(news(offers[("unit", 1)], "failed", exit_code=1))
    assert rolled_up(harness) == [], "a task with a failed partition is failed only once nothing else of it runs"
    await harness.news(news(offers[("lint", 1)], "completed", exit_code=0))
    assert rolled_up(harness) == [("lint", S.QUEUED, S.COMPLETED)]
    harness.forget_events()

    await harness.news(news(offers[("unit", 2)], "completed", exit_code=0))
    assert rolled_up(harness) == [("unit", S.RUNNING, S.FAILED), ("request", S.RUNNING, S.FAILED)]
    final = await harness.scheduler.get_request(request.id)
    assert [(t.name, t.state) for t in final.tasks] == [("unit", S.FAILED), ("lint", S.COMPLETED)]


async def test_a_skipped_task_counts_as_done_for_its_request(harness: Harness) -> None:
    # `paths` that the change does not touch: the optimizer skips the task.
    request = await harness.scheduler.submit(
        TaskRequestSubmission(
            project="p",
            changed_paths=["docs/readme.md"],
            tasks=[definition("unit", paths=["src/**"]), definition("docs", paths=["docs/**"])],
        )
    )
    assert await harness.scheduler.plan_next()
    await harness.scheduler.published()
    planned = await harness.scheduler.get_request(request.id)
    assert [(t.name, t.state) for t in planned.tasks] == [("unit", S.SKIPPED), ("docs", S.QUEUED)]
    await harness.dispatch()
    [offer] = harness.provisioner.offers
    await harness.news(news(offer, "completed", exit_code=0))
    assert (await harness.scheduler.get_request(request.id)).state == S.COMPLETED


async def test_cancel_ends_every_unfinished_part_and_stops_what_runs(harness: Harness) -> None:
    request = await harness.submit(definition("unit", files=3))
    harness.provisioner.room = 2
    await harness.dispatch()
    done, running = harness.provisioner.offers  # the third stays queued: no room for it
    await harness.news(news(done, "running"), news(running, "running"))
    await harness.news(news(done, "completed", exit_code=0))
    harness.forget_events()

    cancelled = await harness.scheduler.cancel_request(request.id)
    await harness.scheduler.published()

    assert cancelled.state == S.CANCELLED
    assert sorted(p.state for p in cancelled.tasks[0].partitions) == [S.CANCELLED, S.CANCELLED, S.COMPLETED]
    assert cancelled == await harness.scheduler.get_request(request.id), "answered as it is stored, in order"
    assert harness.provisioner.cancelled == [running.run_id], "only the run still in flight is stopped"
    assert sorted((b, a) for b, a in harness.partition_events()) == [(S.QUEUED, S.CANCELLED), (S.RUNNING, S.CANCELLED)]
    # The cancelled run's own end, arriving later, changes nothing.
    harness.forget_events()
    await harness.news(news(running, "cancelled"))
    assert harness.events() == []


async def test_cancelling_a_large_request_leaves_nothing_queued_and_announces_every_transition(
    harness: Harness,
) -> None:
    request = await harness.submit(definition("big", files=1000), definition("other", files=2))
    harness.provisioner.room = 3
    await harness.dispatch()
    await harness.news(news(harness.provisioner.offers[0], "running"))
    harness.forget_events()

    cancelled = await harness.scheduler.cancel_request(request.id)
    await harness.scheduler.published()

    partitions = [p for task in cancelled.tasks for p in task.partitions]
    assert len(partitions) == 1002 and {p.state for p in partitions} == {S.CANCELLED}
    assert sorted(harness.provisioner.cancelled) == sorted(o.run_id for o in harness.provisioner.offers)
    transitions = harness.partition_events()
    assert (
        len(transitions) == 1002 and len({e.partition.id for e in harness.events() if hasattr(e, "partition")}) == 1002
    )
    assert sorted(set(transitions)) == [(S.DISPATCHED, S.CANCELLED), (S.QUEUED, S.CANCELLED), (S.RUNNING, S.CANCELLED)]
    assert transitions.count((S.DISPATCHED, S.CANCELLED)) == 2 and transitions.count((S.RUNNING, S.CANCELLED)) == 1
    assert sorted((e.name, e.state) for e in harness.events() if isinstance(e, TaskStatus)) == [
        ("big", S.CANCELLED),
        ("other", S.CANCELLED),
    ]
    assert [e.state for e in harness.events() if isinstance(e, RequestStatus)] == [S.CANCELLED]
