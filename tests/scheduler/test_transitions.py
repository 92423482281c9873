"""Runs' news and what it does to a partition: every transition the scheduler allows, and those it refuses."""

from __future__ import annotations

import pytest

from infrax.model import State, is_final
from tests.scheduler.conftest import Harness, definition, news

FINAL = [State.COMPLETED, State.FAILED, State.CANCELLED, State.EXCEPTION]
RUN_NEWS = ["running", "completed", "failed", "cancelled", "exception"]


async def offered(harness: Harness, **fields):  # type: ignore[no-untyped-def]
    """One task of one partition, planned and dispatched: its offer, its partition id."""
    await harness.submit(definition(**fields))
    await harness.dispatch()
    [offer] = harness.provisioner.offers
    harness.forget_events()
    return offer


async def state_of(harness: Harness, partition_id: str):  # type: ignore[no-untyped-def]
    return await harness.scheduler.get_partition(partition_id)


# -- allowed ----------------------------------------------------------------------------------


async def test_dispatch_marks_the_partition_dispatched_and_says_so(harness: Harness) -> None:
    request = await harness.submit(definition())
    partition_id = request.tasks[0].partitions[0].id
    harness.forget_events()
    await harness.dispatch()
    await harness.scheduler.published()
    assert (await state_of(harness, partition_id)).state == State.DISPATCHED
    assert harness.partition_events() == [(State.QUEUED, State.DISPATCHED)]


@pytest.mark.parametrize("before", [State.QUEUED, State.DISPATCHED])
async def test_running_news_starts_a_partition_that_was_queued_or_dispatched(harness: Harness, before: State) -> None:
    # Queued too: the provisioner hands a run on before the dispatch is recorded, so `running` may come first.
    offer = await offered(harness)
    await harness.force(offer.partition_id, state=before)
    await harness.news(news(offer, "running", log_url="http://x/log"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.container_id, partition.log_url) == (State.RUNNING, "c-1", "http://x/log")
    assert harness.partition_events() == [(before, State.RUNNING)]


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
@pytest.mark.parametrize("before", [State.DISPATCHED, State.RUNNING])
async def test_a_runs_end_is_the_partitions_end(harness: Harness, before: State, final: str) -> None:
    offer = await offered(harness)
    await harness.force(offer.partition_id, state=before)
    await harness.news(news(offer, final, exit_code=0 if final == "completed" else 1, message="the end"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.run, partition.message) == (State(final), 0, "the end")
    assert partition.exit_code == (0 if final == "completed" else 1)
    assert harness.partition_events() == [(before, State(final))]


async def test_a_lost_run_with_retries_left_is_queued_again_as_the_next_run(harness: Harness) -> None:
    offer = await offered(harness, retries=1)
    await harness.news(news(offer, "running"))
    await harness.news(news(offer, "exception", message="agent gone"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.run, partition.started_at) == (State.QUEUED, 1, None)
    assert partition.message == "run 0 lost (agent gone); re-queued as run 1"
    assert harness.partition_events() == [(State.DISPATCHED, State.RUNNING), (State.RUNNING, State.QUEUED)]

    # The next run goes out under its own run id, and its end is final.
    await harness.dispatch()
    second = harness.provisioner.offers[-1]
    assert (second.run, second.run_id) == (1, f"{offer.partition_id}-1")
    await harness.news(news(second, "exception", message="agent gone again"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.run) == (State.EXCEPTION, 1)
    assert partition.message == "agent gone again (retries used up: 1)"


async def test_a_lost_run_without_retries_is_an_exception(harness: Harness) -> None:
    offer = await offered(harness, retries=0)
    await harness.news(news(offer, "exception", message="no container"))
    assert (await state_of(harness, offer.partition_id)).state == State.EXCEPTION
    assert harness.partition_events() == [(State.DISPATCHED, State.EXCEPTION)]


# -- refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize("arrives", RUN_NEWS)
@pytest.mark.parametrize("final", FINAL)
async def test_news_of_a_final_partition_changes_nothing(harness: Harness, final: State, arrives: str) -> None:
    offer = await offered(harness, retries=2)
    await harness.force(offer.partition_id, state=final, message="as it ended")
    await harness.news(news(offer, arrives, message="late news"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.run, partition.message) == (final, 0, "as it ended")
    assert harness.events() == []


@pytest.mark.parametrize("arrives", RUN_NEWS)
async def test_news_of_a_replaced_run_changes_nothing(harness: Harness, arrives: str) -> None:
    offer = await offered(harness, retries=2)
    await harness.news(news(offer, "exception", message="lost"))  # run 0 lost: run 1 is queued
    harness.forget_events()
    await harness.news(news(offer, arrives, message="run 0, too late"))
    partition = await state_of(harness, offer.partition_id)
    assert (partition.state, partition.run) == (State.QUEUED, 1)
    assert harness.events() == []


async def test_running_twice_is_one_transition(harness: Harness) -> None:
    offer = await offered(harness)
    await harness.news(news(offer, "running"))
    await harness.news(news(offer, "running"))
    await harness.news(news(offer, "running"), news(offer, "running"))
    assert harness.partition_events() == [(State.DISPATCHED, State.RUNNING)]


async def test_the_same_end_delivered_twice_is_one_transition(harness: Harness) -> None:
    offer = await offered(harness)
    await harness.news(news(offer, "completed", exit_code=0), news(offer, "completed", exit_code=0))
    await harness.news(news(offer, "completed", exit_code=0))
    assert harness.partition_events() == [(State.DISPATCHED, State.COMPLETED)]


async def test_running_that_arrives_after_the_end_is_ignored(harness: Harness) -> None:
    offer = await offered(harness)
    await harness.news(news(offer, "failed", exit_code=1))
    await harness.news(news(offer, "running"))
    partition = await state_of(harness, offer.partition_id)
    assert partition.state == State.FAILED
    assert harness.partition_events() == [(State.DISPATCHED, State.FAILED)]


async def test_start_and_end_in_one_batch_are_published_in_order(harness: Harness) -> None:
    offer = await offered(harness)
    await harness.news(news(offer, "running"), news(offer, "completed", exit_code=0))
    # One commit, one event: the partition's own last state, coming from the state before the batch.
    assert harness.partition_events() == [(State.DISPATCHED, State.COMPLETED)]
    assert (await state_of(harness, offer.partition_id)).started_at is not None


async def test_an_end_before_its_start_keeps_the_end(harness: Harness) -> None:
    offer = await offered(harness)
    await harness.news(news(offer, "completed", exit_code=0), news(offer, "running"))
    assert (await state_of(harness, offer.partition_id)).state == State.COMPLETED
    assert harness.partition_events() == [(State.DISPATCHED, State.COMPLETED)]


async def test_news_of_an_unknown_partition_is_ignored(harness: Harness) -> None:
    offer = await offered(harness)
    stranger = offer.model_copy(update={"partition_id": "no-such-partition", "run_id": "no-such-partition-0"})
    await harness.news(news(stranger, "completed", exit_code=0))
    assert harness.events() == []
    assert not is_final((await state_of(harness, offer.partition_id)).state)
