"""A push the scheduler refuses (a 4xx) is answered with that refusal and leaves no job behind:
the next push of the same revision is tried again, not answered with a job in `exception`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from infrax.bus import Message, topics
from tests.jobmaster.conftest import commit, git

CONFIG = """version: 1
project: refused
tasks:
  - {name: win, containerTag: windows_10, bootstrapper: run.sh, files: [a.py]}
"""


async def test_a_refused_push_stores_no_job_and_the_next_push_tries_again(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    seen: list[dict[str, Any]] = []
    ended = asyncio.Event()

    async def collect(message: Message) -> None:
        seen.append(message.body)
        if message.body["state"] == "exception":
            ended.set()

    await infrax.stack.bus.subscribe("test-jobs", topics.JOBS, ["#"], collect)
    repo = tmp_path / "refused"
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    commit(repo, {".infrax.yml": CONFIG, "a.py": "", "run.sh": "#!/bin/sh\n"}, "first")

    for _ in range(2):  # the second push is refused again by the scheduler, not by a stored job
        pushed = await infrax["jobmaster"].post("/api/v1/pushes", json={"repository": str(repo)})
        assert pushed.status_code == 422, pushed.text
        assert "task 'win': no container type has tags ['windows_10']" in pushed.json()["detail"]
        listed = await infrax["jobmaster"].get("/api/v1/jobs")
        assert listed.status_code == 200 and listed.json() == [], "a refused push left a job"
    # Whoever heard the job was pending heard that it ended, and why.
    await asyncio.wait_for(ended.wait(), 10)
    refused = [m for m in seen if m["state"] == "exception"]
    assert refused and "refused the tasks" in (refused[0]["message"] or "")
