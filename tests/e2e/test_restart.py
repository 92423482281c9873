"""`infrax up` killed while partitions are queued and running, then started again on the same SQLite file."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.e2e.conftest import admin_token, script, start_up, task, wait_healthy, write_up_config


def _journal(path: Path) -> list[tuple[str, str, int]]:
    if not path.exists():
        return []
    return [(line.split()[0], line.split()[1], int(line.split()[2])) for line in path.read_text().splitlines() if line]


async def test_kill_and_restart_loses_nothing_and_reruns_nothing_completed(tmp_path: Path) -> None:
    config, ports = write_up_config(tmp_path, max_concurrent=2)
    scheduler = f"http://127.0.0.1:{ports['scheduler']}"
    journal = tmp_path / "journal"
    work = script(
        tmp_path,
        "work.sh",
        f'echo "start $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\nsleep 0.6\n'
        f'echo "done $INFRAX_PARTITION_ID $INFRAX_RUN" >> {journal}\n',
    )
    log = tmp_path / "up.log"
    process = start_up(config, log)
    try:
        await wait_healthy(scheduler, process)
        async with httpx.AsyncClient(base_url=scheduler, timeout=30, headers=admin_token(tmp_path / "data")) as client:
            files = [f"f{i}.py" for i in range(10)]
            response = await client.post(
                "/api/v1/task-requests", json={"tasks": [task("work", work, files, partitions=10)]}
            )
            assert response.status_code == 201, response.text
            request_id = response.json()["id"]

            async def states() -> list[dict]:
                body = (await client.get(f"/api/v1/task-requests/{request_id}")).json()
                return body["tasks"][0]["partitions"]

            for _ in range(300):
                parts = await states()
                by_state = [p["state"] for p in parts]
                if by_state.count("completed") >= 2 and "running" in by_state and "queued" in by_state:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"never saw completed, running and queued together: {by_state}")
            completed_before = {p["id"]: p["run"] for p in await states() if p["state"] == "completed"}
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            lines_before_restart = len(_journal(journal))

            process = start_up(config, log)
            await wait_healthy(scheduler, process)
            for _ in range(600):
                body = (await client.get(f"/api/v1/task-requests/{request_id}")).json()
                if body["state"] in ("completed", "failed", "exception"):
                    break
                await asyncio.sleep(0.1)
            parts = body["tasks"][0]["partitions"]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)

    assert body["state"] == "completed", log.read_text()[-3000:]
    assert len(parts) == 10 and all(p["state"] == "completed" for p in parts)
    entries = _journal(journal)
    for partition_id, run in completed_before.items():
        after = [e for e in entries[lines_before_restart:] if e[1] == partition_id]
        assert after == [], f"partition {partition_id}, completed before the kill, ran again: {after}"
        assert next(p for p in parts if p["id"] == partition_id)["run"] == run
    for part in parts:
        done = [e for e in entries if e[0] == "done" and e[1] == part["id"]]
        assert done, f"partition {part['id']} reported completed but never finished its work"
    leaked = subprocess.run(["pgrep", "-f", f"infrax.agent.*{tmp_path}"], capture_output=True, text=True).stdout
    assert leaked.strip() == "", f"agents left running: {leaked}"
