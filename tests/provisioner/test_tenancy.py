"""A container serves one project at one trust level (infrax.provisioner.tenancy), on real agents.

The attack these stop: a pull request's run (untrusted) left on a warm container rewrites the
source cache a trusted push of its project checks out from next; a run of project A reads what
B's runs left on a container they shared.
"""

from __future__ import annotations

from infrax.model import ContainerState, ContainerType

from .conftest import MakeHarness, make_offer, settled, wait_for


async def _ran_on(made, offer) -> str:  # type: ignore[no-untyped-def]
    found = await wait_for(
        lambda: [a for a in made.executioner.assignments if a.offer.run_id == offer.run_id],
        what=f"run {offer.run_id} handed over",
    )
    return str(found[0].container_id)


async def _run_and_release(made, offer) -> str:  # type: ignore[no-untyped-def]
    assert made.provisioner.offer([offer])[0].accepted
    container = await _ran_on(made, offer)
    assert await made.provisioner.release(container, offer.run_id, healthy=True)
    return container


async def test_an_untrusted_run_never_lands_where_a_trusted_run_goes_next(harness: MakeHarness) -> None:
    # One container at most: the pull request's container must give way, not be reused.
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=1)
    made = await harness([linux])
    pull_request = await _run_and_release(made, make_offer(project="a", trusted=False))
    trusted = await _run_and_release(made, make_offer(project="a", trusted=True))
    assert trusted != pull_request
    assert pull_request not in made.provisioner.slots, "the pull request's container was kept"
    # And the other way round: a later pull request does not get the trusted push's container.
    later = await _run_and_release(made, make_offer(project="a", trusted=False))
    assert later not in (trusted, pull_request)


async def test_a_project_never_runs_on_a_container_that_keeps_another_projects_runs(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=3)
    made = await harness([linux])
    a_first = await _run_and_release(made, make_offer(project="a", trusted=True))
    b_first = await _run_and_release(made, make_offer(project="b", trusted=True))
    assert b_first != a_first
    # Each project's next run goes back to its own warm container.
    assert await _run_and_release(made, make_offer(project="a", trusted=True)) == a_first
    assert await _run_and_release(made, make_offer(project="b", trusted=True)) == b_first
    tenants = {c.id: c.tenant for c in made.provisioner.containers()}
    assert tenants == {a_first: "a/trusted", b_first: "b/trusted"}


async def test_a_warm_container_takes_anyones_first_run_then_only_its_tenants(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], min_warm=1, max_concurrent=2)
    made = await harness([linux])
    warm = await wait_for(lambda: made.slots(ContainerState.IDLE), what="a warm container")
    assert warm[0].tenant is None
    first = await _run_and_release(made, make_offer(project="b", trusted=False))
    assert first == warm[0].id and made.provisioner.slots[first].tenant == "b/untrusted"
    other = await _run_and_release(made, make_offer(project="b", trusted=True))
    assert other != first


async def test_isolation_run_gives_every_run_a_fresh_container(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=2, isolation="run")
    made = await harness([linux])
    first = await _run_and_release(made, make_offer(project="a", trusted=False))
    second = await _run_and_release(made, make_offer(project="a", trusted=False))
    assert first != second
    await settled(made)
    assert first not in made.provisioner.slots and second not in made.provisioner.slots


async def test_an_idle_container_whose_agent_says_it_is_broken_is_retired(harness: MakeHarness) -> None:
    linux = ContainerType(name="linux", tags=["linux"], max_concurrent=2)
    made = await harness([linux])
    container = await _run_and_release(made, make_offer(project="a", trusted=True))
    slot = made.provisioner.slots[container]
    # What the agent's heartbeat says once a run left it unable to fork (infrax.agent.health).
    broken = {**slot.agent, "busy": False, "runId": None, "problem": "cannot fork: Resource temporarily unavailable"}

    async def says_broken(endpoint, secret):  # type: ignore[no-untyped-def]
        return broken

    slot.provider.heartbeat = says_broken  # type: ignore[method-assign]
    await made.provisioner.health.probe(slot)
    assert container not in made.provisioner.slots
    assert made.provisioner.lost[(slot.provider.name, "broken")] == 1
