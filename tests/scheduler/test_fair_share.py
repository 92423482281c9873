"""Fair share between projects: a flood of one does not hold up another, backlogged projects
start in proportion to their weights, priority lanes age, and a project's limit holds.

The test plays the containers: `cycle` ends the oldest runs (freeing their containers) and lets
the scheduler dispatch again, as the provisioner's capacity events would make it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from infrax.executioner.client import ExecutionerClient
from infrax.model import PartitionOffer, TaskRequestSubmission
from infrax.scheduler.fair_share import ProjectShare
from infrax.scheduler.service import Scheduler
from infrax.store import Database
from tests.scheduler.conftest import PlanningOptimizer, PlayedProvisioner, RecordingBus, _nowhere, definition, news

CONTAINERS = 4


class Shared:
    """A scheduler shared by projects, on `CONTAINERS` containers the test plays."""

    def __init__(self, scheduler: Scheduler, provisioner: PlayedProvisioner) -> None:
        self.scheduler, self.provisioner = scheduler, provisioner
        self.running: list[PartitionOffer] = []
        self.started: list[PartitionOffer] = []

    async def submit(self, project: str, partitions: int, *, priority: int = 0, name: str = "unit") -> None:
        """Queued (planned), in requests of at most 1,000 partitions."""
        for offset in range(0, partitions, 1000):
            size = min(1000, partitions - offset)
            task = definition(f"{name}{offset}", size, priority=priority)
            await self.scheduler.submit(TaskRequestSubmission(tasks=[task], project=project))
            assert await self.scheduler.plan_next()

    async def dispatch(self) -> list[PartitionOffer]:
        before = len(self.provisioner.offers)
        while await self.scheduler.dispatch_batch():
            pass
        new = self.provisioner.offers[before:]
        self.running += new
        self.started += new
        return new

    async def cycle(self, ending: int = CONTAINERS) -> list[PartitionOffer]:
        """The `ending` oldest runs end (their containers free again); then what started."""
        done, self.running = self.running[:ending], self.running[ending:]
        await self.scheduler.apply_run_statuses([news(o, "completed", exit_code=0) for o in done])
        self.provisioner.room += len(done)
        self.scheduler._free_checked = 0.0  # as the provisioner's "free" events would
        self.scheduler._blocked_types.clear()
        return await self.dispatch()


def project_of(offer: PartitionOffer) -> str:
    return offer.project


@pytest.fixture
async def shared(database: Database) -> AsyncIterator[Callable[..., Awaitable[Shared]]]:
    await database.create_schema()
    made: list[tuple[Scheduler, RecordingBus, PlayedProvisioner]] = []

    async def make(projects: dict[str, ProjectShare] | None = None) -> Shared:
        bus = RecordingBus()
        await bus.start()
        provisioner = PlayedProvisioner(room=CONTAINERS)
        executioner = ExecutionerClient(_nowhere("executioner"))
        scheduler = Scheduler(
            database, bus, PlanningOptimizer(), provisioner, executioner, rerun_failures=0, projects=projects
        )
        made.append((scheduler, bus, provisioner))
        return Shared(scheduler, provisioner)

    yield make
    for scheduler, bus, provisioner in made:
        await scheduler.published()
        await bus.close()
        for client in (provisioner.http, scheduler.executioner.http, scheduler.optimizer.http):  # type: ignore[union-attr]
            await client.aclose()


async def test_a_small_project_starts_at_the_next_free_container_not_behind_a_flood(
    shared: Callable[..., Awaitable[Shared]],
) -> None:
    infrax = await shared()
    await infrax.submit("a", 5000)
    assert {project_of(o) for o in await infrax.dispatch()} == {"a"}
    await infrax.cycle()  # A runs on, its backlog behind
    await infrax.submit("b", 20)

    started = await infrax.cycle(ending=1)  # one container frees

    assert [project_of(o) for o in started] == ["b"]


@pytest.mark.parametrize(("weight_a", "weight_b"), [(1, 1), (3, 1)])
async def test_backlogged_projects_start_in_proportion_to_their_weights(
    shared: Callable[..., Awaitable[Shared]], weight_a: int, weight_b: int
) -> None:
    infrax = await shared({"a": ProjectShare(weight=weight_a), "b": ProjectShare(weight=weight_b)})
    await infrax.submit("a", 5000)
    await infrax.dispatch()
    await infrax.submit("b", 1000)
    infrax.started.clear()
    while len(infrax.started) < 600:
        await infrax.cycle()

    starts = Counter(project_of(o) for o in infrax.started[:600])
    expected_a = 600 * weight_a / (weight_a + weight_b)
    assert abs(starts["a"] - expected_a) <= 0.1 * expected_a, starts
    assert abs(starts["b"] - (600 - expected_a)) <= 0.1 * (600 - expected_a), starts


async def test_a_project_alone_gets_every_container(shared: Callable[..., Awaitable[Shared]]) -> None:
    infrax = await shared({"a": ProjectShare(weight=1), "b": ProjectShare(weight=9)})
    await infrax.submit("a", 50)
    assert len(await infrax.dispatch()) == CONTAINERS


async def test_a_priority_lane_goes_first_and_a_low_one_ages_instead_of_starving(
    shared: Callable[..., Awaitable[Shared]],
) -> None:
    infrax = await shared()
    await infrax.submit("a", 2000)
    await infrax.submit("b", 2000)
    await infrax.dispatch()
    await infrax.submit("c", 1, priority=-50, name="try")
    await infrax.submit("a", 2, priority=100, name="release")

    assert [o.task_name for o in await infrax.cycle(ending=2)] == ["release0", "release0"]
    waited = 0
    while not any(o.task_name == "try0" for o in await infrax.cycle()):
        waited += CONTAINERS
        assert waited < 1000, "the low lane starved"
    # Fifty virtual starts of each of the two backlogged projects went first: about a hundred starts.
    assert 80 <= waited <= 120, waited


async def test_a_project_holds_no_more_containers_of_a_type_than_its_limit(
    shared: Callable[..., Awaitable[Shared]],
) -> None:
    infrax = await shared({"a": ProjectShare(max_containers={"linux": 1}), "b": ProjectShare()})
    await infrax.submit("a", 100)
    await infrax.submit("b", 100)

    assert Counter(project_of(o) for o in await infrax.dispatch()) == {"a": 1, "b": CONTAINERS - 1}
    for _ in range(20):
        await infrax.cycle(ending=1)
        assert sum(project_of(o) == "a" for o in infrax.running) <= 1
    assert any(project_of(o) == "a" for o in infrax.started[CONTAINERS:]), "a runs again once its container is free"
