"""The executioner keeps a run's artifacts and log before its end is stored: across its own
restart, within the run's bounds, until they expire."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from infrax.artifacts import MemoryArtifacts
from infrax.executioner.artifacts import LOG_ARTIFACT, ArtifactKeeper
from infrax.executioner.service import Executioner
from infrax.model import ContainerAccess, utcnow
from tests.agent.conftest import StartAgent
from tests.executioner.conftest import Made, assignment, journal_lines, journal_script


async def wait_for(condition, what: str, timeout: float = 20) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def test_a_restart_mid_run_keeps_its_artifacts_once_and_ends_it_once(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    go = tmp_path / "go"
    script, journal = journal_script(
        tmp_path,
        f'echo report > "$INFRAX_ARTIFACTS_DIR/report.txt"\n'
        f"echo waiting\nwhile [ ! -e {go} ]; do sleep 0.05; done\necho went\n",
    )
    first = await made.executioner()
    work = assignment(agent, script)
    run_id = work.offer.run_id
    made.provisioner.containers[run_id] = ContainerAccess(
        run_id=run_id, container_id=work.container_id, host=work.host, port=work.port, secret=work.secret
    )
    await first.execute([work])
    await wait_for(lambda: made.of(run_id) == ["running"], "the run to start")
    await first.stop()  # the run goes on in its agent

    again: Executioner = await made.executioner()
    await wait_for(lambda: run_id in again.active, "the restarted executioner to re-attach")
    go.touch()
    final = await made.final(run_id)

    assert final.state == "completed" and [s for s in made.of(run_id) if s != "running"] == ["completed"]
    assert len(journal_lines(journal)) == 1
    kept = await again.artifacts.store.list(run_id)
    assert [a.name for a in kept] == ["report.txt"]
    log = again.log_path(run_id).read_text()
    assert "re-attached" in log and "went" in log and "kept 1 artifacts" in log
    shown = again.artifacts.log_artifact(run_id, again.log_path(run_id))
    assert shown is not None and shown.name == LOG_ARTIFACT and shown.size == len(log.encode())


async def test_what_takes_a_run_past_its_bound_is_not_kept_and_the_log_says_so(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, _ = journal_script(
        tmp_path,
        'head -c 600 /dev/zero > "$INFRAX_ARTIFACTS_DIR/a"\nhead -c 600 /dev/zero > "$INFRAX_ARTIFACTS_DIR/b"\n',
    )
    executioner = await made.executioner()
    executioner.artifacts = ArtifactKeeper(MemoryArtifacts(), max_run_bytes=1000)
    work = assignment(agent, script)
    await executioner.execute([work])
    await made.final(work.offer.run_id)

    assert [a.name for a in await executioner.artifacts.store.list(work.offer.run_id)] == ["a"]
    log = executioner.log_path(work.offer.run_id).read_text()
    assert "artifact not kept: b (600 bytes) would take the run past its 1.0 KB of artifacts" in log


async def test_artifacts_and_logs_expire_when_their_time_is_up(
    made: Made, start_agent: StartAgent, tmp_path: Path
) -> None:
    agent = await start_agent()
    script, _ = journal_script(tmp_path, 'echo x > "$INFRAX_ARTIFACTS_DIR/x"\n')
    executioner = await made.executioner()
    store = MemoryArtifacts()
    executioner.artifacts = ArtifactKeeper(store, expiry=timedelta(days=7), log_dir=executioner.log_dir)
    work = assignment(agent, script)
    await executioner.execute([work])
    await made.final(work.offer.run_id)
    log = executioner.artifacts.log_artifact(work.offer.run_id, executioner.log_path(work.offer.run_id))
    kept = [*await store.list(work.offer.run_id), log]
    assert all(
        a is not None and timedelta(days=7) - timedelta(minutes=1) < a.expires_at - utcnow() <= timedelta(days=7)
        for a in kept
    )

    assert await executioner.artifacts.sweep(utcnow() + timedelta(days=6)) == 0
    assert await executioner.artifacts.sweep(utcnow() + timedelta(days=7, seconds=1)) == 2, "the artifact and the log"
    assert await store.list(work.offer.run_id) == [] and not executioner.log_path(work.offer.run_id).exists()
