"""The executioner: one run per assignment, its log, its news on the bus, its container handed back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from infrax.executioner import service
from infrax.executioner.service import Executioner
from infrax.model import ContainerAccess
from tests.agent.conftest import StartAgent
from tests.executioner.conftest import Made, assignment, journal_lines, journal_script


async def test_a_run_streams_its_log_and_reports_running_then_its_end(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path, 'echo "testing $*"\necho "to stderr" >&2\nexit 3\n')
    executioner = await made.executioner()
    work = assignment(agent, script, "--flag", files=["a.py"])

    assert await executioner.execute([work]) == [work.offer.run_id]
    final = await made.final(work.offer.run_id)

    assert made.of(work.offer.run_id) == ["running", "failed"]
    assert (final.exit_code, final.container_id) == (3, "c-1")
    assert final.log_url == f"http://executioner.test/api/v1/runs/{work.offer.run_id}/log"
    log = executioner.log_path(work.offer.run_id).read_text()
    assert "testing --flag a.py" in log and "to stderr" in log and "[infrax] failed (exit code 3)" in log
    assert [(r.run_id, r.healthy) for r in made.provisioner.releases] == [(work.offer.run_id, True)]
    stored = await executioner.get_run(work.offer.run_id)
    assert stored is not None and (stored[0].state, stored[0].exit_code) == ("failed", 3)
    assert len(journal_lines(journal)) == 1


async def test_an_assignment_repeated_in_a_batch_and_later_runs_once(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path)
    executioner = await made.executioner()
    work = assignment(agent, script)

    assert await executioner.execute([work, work]) == [work.offer.run_id]
    assert await executioner.execute([work]) == [], "a repeat while it runs"
    await made.final(work.offer.run_id)
    assert await executioner.execute([work]) == [], "a repeat after it ended"
    assert journal_lines(journal) == [f"start {work.offer.partition_id} 0"]
    assert made.of(work.offer.run_id) == ["running", "completed"]


async def test_an_assignment_seen_before_a_restart_is_not_run_again(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path)
    first = await made.executioner()
    old, new = assignment(agent, script), assignment(agent, script)
    await first.execute([old])
    await made.final(old.offer.run_id)
    await first.stop()

    again: Executioner = await made.executioner()  # the same executioner after a restart: nothing in memory
    # The store knows `old` (a unique-key clash on insert): only `new` runs.
    assert await again.execute([old, new]) == [new.offer.run_id]
    await made.final(new.offer.run_id)
    assert sorted(journal_lines(journal)) == sorted(
        [f"start {old.offer.partition_id} 0", f"start {new.offer.partition_id} 0"]
    )
    assert made.of(old.offer.run_id) == ["running", "completed"]


async def test_an_agent_that_cannot_be_reached_ends_the_run_lost_and_the_container_unhealthy(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path)
    executioner = await made.executioner()
    work = assignment(agent, script).model_copy(update={"port": 1})  # nothing listens there

    await executioner.execute([work])
    final = await made.final(work.offer.run_id)

    assert final.state == "exception" and "lost the agent" in (final.message or "")
    assert [(r.run_id, r.healthy) for r in made.provisioner.releases] == [(work.offer.run_id, False)]
    assert journal_lines(journal) == []


async def test_a_wrong_secret_is_refused_by_the_agent_and_runs_nothing(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path)
    executioner = await made.executioner()
    work = assignment(agent, script).model_copy(update={"secret": "not-the-secret-of-this-agent"})

    await executioner.execute([work])
    final = await made.final(work.offer.run_id)

    assert final.state == "exception"
    assert journal_lines(journal) == []


async def test_a_run_taken_while_the_executioner_looks_for_runs_to_resume_is_followed_once(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path, "echo once\n")
    work = assignment(agent, script)
    # The provisioner knows where it runs, as it would for a run in flight before a restart.
    made.provisioner.containers[work.offer.run_id] = ContainerAccess(
        run_id=work.offer.run_id, container_id=work.container_id, host=work.host, port=work.port, secret=work.secret
    )
    executioner = await made.executioner()  # its look for runs to resume has begun
    await executioner.execute([work])
    await made.final(work.offer.run_id)

    assert made.of(work.offer.run_id) == ["running", "completed"]
    log = executioner.log_path(work.offer.run_id).read_text()
    assert log.count(f"[infrax] run {work.offer.run_id}") == 1 and log.count("once") == 1, log
    assert len(journal_lines(journal)) == 1


async def test_a_run_cancelled_while_it_is_staged_never_starts(
    made: Made, start_agent: StartAgent, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = await start_agent()
    script, journal = journal_script(tmp_path)
    staging, go_on = asyncio.Event(), asyncio.Event()
    staged = service.stage_source

    async def held_stage(*args: Any, **kwargs: Any) -> Any:
        staging.set()
        await go_on.wait()
        return await staged(*args, **kwargs)

    monkeypatch.setattr(service, "stage_source", held_stage)
    executioner = await made.executioner()
    work = assignment(agent, script)
    await executioner.execute([work])
    await asyncio.wait_for(staging.wait(), 10)

    assert await executioner.cancel([work.offer.run_id]) == [], "the agent has no such run yet"
    go_on.set()
    final = await made.final(work.offer.run_id)

    assert final.state == "cancelled" and journal_lines(journal) == []
    assert [(r.run_id, r.healthy) for r in made.provisioner.releases] == [(work.offer.run_id, True)]


async def test_a_cancel_that_reaches_the_agent_before_its_run_still_stops_the_run(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    never = tmp_path / "never"  # only a cancel ends the run
    script, _journal = journal_script(tmp_path, f"while [ ! -e {never} ]; do sleep 0.05; done\n")
    executioner = await made.executioner()
    building, go_on = asyncio.Event(), asyncio.Event()
    build = executioner.requests.build

    async def held_build(offer: Any) -> Any:  # the run request is on its way when the cancel comes
        request = await build(offer)
        building.set()
        await go_on.wait()
        return request

    executioner.requests.build = held_build  # type: ignore[method-assign]
    work = assignment(agent, script)
    await executioner.execute([work])
    await asyncio.wait_for(building.wait(), 10)
    assert await executioner.cancel([work.offer.run_id]) == [], "the agent has no such run yet"
    go_on.set()
    final = await made.final(work.offer.run_id)

    assert final.state == "cancelled"
    assert [(r.run_id, r.healthy) for r in made.provisioner.releases] == [(work.offer.run_id, True)]
