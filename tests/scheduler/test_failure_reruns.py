"""A failed partition's failing tests run again, on another container, while its re-runs last: a test
that then passes is intermittent and the partition passes (unless its project says otherwise); one
that fails every time fails it."""

from __future__ import annotations

from typing import Any

import pytest

from infrax.bus.messages import PartitionStatus
from infrax.model import PartitionOffer, State
from tests.scheduler.conftest import Harness, definition, news

A, B = "tests/test_a.py::test_a", "tests/test_b.py::TestB::test_b"


@pytest.fixture
def reruns(harness: Harness) -> Harness:
    harness.scheduler.rerun_failures = 2  # the installation's default (Config.rerun_failures)
    return harness


async def first_offer(harness: Harness, **fields: Any) -> PartitionOffer:
    await harness.submit(definition(files=1, **fields))
    await harness.dispatch()
    return harness.provisioner.offers[-1]


async def next_offer(harness: Harness) -> PartitionOffer:
    before = len(harness.provisioner.offers)
    await harness.dispatch()
    assert len(harness.provisioner.offers) == before + 1, "the re-run was not offered"
    return harness.provisioner.offers[-1]


async def test_what_failed_runs_again_elsewhere_and_a_test_that_then_passes_is_intermittent(reruns: Harness) -> None:
    offer = await first_offer(reruns)
    await reruns.news(news(offer, "failed", exit_code=1, message="2 tests failed", failing=[A, B]))

    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run, part.failure_reruns) == (State.QUEUED, 1, 1)
    assert part.message == "run 0 failed (2 tests failed); its 2 failing tests run again as run 1, on another container"
    again = await next_offer(reruns)
    assert (again.run, again.tests, again.avoid_container) == (1, [A, B], "c-1")
    assert again.files == offer.files, "the partition's files stay; the re-run's arguments are its tests"

    await reruns.news(news(again, "completed", exit_code=0))

    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.intermittent) == (State.COMPLETED, [A, B])
    assert part.message == f"intermittent: {A}, {B} failed, then passed on run 1"
    request = await reruns.scheduler.get_request(part.request_id)
    assert request.state == State.COMPLETED
    assert request.message == f"task unit: partition 1/1: intermittent: {A}, {B} failed, then passed on run 1"
    final = [e for e in reruns.events() if isinstance(e, PartitionStatus) and e.partition.state == State.COMPLETED]
    assert final and final[-1].duration is None and final[-1].file_durations is None, (
        "a re-run ran part of the partition: it teaches the optimizer nothing"
    )


async def test_a_test_that_fails_every_time_fails_the_partition_after_its_reruns(reruns: Harness) -> None:
    offer = await first_offer(reruns)
    await reruns.news(news(offer, "failed", exit_code=1, message="2 failed", failing=[A, B]))
    second = await next_offer(reruns)
    await reruns.news(news(second, "failed", exit_code=1, message="1 failed: b", failing=[B]))
    third = await next_offer(reruns)
    assert (third.run, third.tests) == (2, [B]), "only what still failed runs again"
    await reruns.news(news(third, "failed", exit_code=1, message="1 failed: b", failing=[B]))

    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run, part.failure_reruns, part.intermittent) == (State.FAILED, 2, 2, [A])
    assert part.message == f"1 failed: b (the same on 2 re-runs); intermittent: {A}"
    assert len(reruns.provisioner.offers) == 3


async def test_without_per_test_results_the_whole_partition_runs_again(reruns: Harness) -> None:
    offer = await first_offer(reruns)
    await reruns.news(news(offer, "failed", exit_code=1, message="exited with code 1"))
    again = await next_offer(reruns)
    assert again.tests is None and again.run == 1
    await reruns.news(news(again, "completed", exit_code=0))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.intermittent) == (State.COMPLETED, offer.files)


async def test_a_task_or_project_that_says_so_fails_on_an_intermittent_failure(reruns: Harness) -> None:
    offer = await first_offer(reruns, intermittent="fail")
    await reruns.news(news(offer, "failed", exit_code=1, failing=[A]))
    await reruns.news(news(await next_offer(reruns), "completed", exit_code=0))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.intermittent) == (State.FAILED, [A])
    assert part.message is not None and part.message.endswith("(counted as failed)")


async def test_a_task_without_reruns_fails_at_once(reruns: Harness) -> None:
    offer = await first_offer(reruns, rerun_failures=0)
    await reruns.news(news(offer, "failed", exit_code=1, message="1 failed", failing=[A]))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run, part.message) == (State.FAILED, 0, "1 failed")


async def test_a_manual_rerun_of_the_failed_partitions_has_its_automatic_reruns_anew(reruns: Harness) -> None:
    offer = await first_offer(reruns, rerun_failures=1)
    await reruns.news(news(offer, "failed", exit_code=1, failing=[A]))
    await reruns.news(news(await next_offer(reruns), "failed", exit_code=1, failing=[A]))
    assert (await reruns.scheduler.get_partition(offer.partition_id)).state == State.FAILED

    await reruns.scheduler.rerun_failed(offer.request_id)
    manual = await next_offer(reruns)
    assert (manual.run, manual.tests, manual.avoid_container) == (2, None, None), "all of it, anywhere"
    await reruns.news(news(manual, "failed", exit_code=1, failing=[A]))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run, part.failure_reruns) == (State.QUEUED, 3, 1)


async def test_a_known_intermittent_failure_runs_again_even_with_the_reruns_used_up(reruns: Harness) -> None:
    offer = await first_offer(reruns, rerun_failures=0)
    await reruns.news(news(offer, "failed", exit_code=1, message="1 failed", failing=[A], known_intermittent=True))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run) == (State.QUEUED, 1)
    assert part.message is not None and "(known intermittent)" in part.message
    again = await next_offer(reruns)
    await reruns.news(news(again, "failed", exit_code=1, message="1 failed", failing=[A], known_intermittent=True))
    part = await reruns.scheduler.get_partition(offer.partition_id)
    assert (part.state, part.run) == (State.FAILED, 1), "once more, not for ever"
