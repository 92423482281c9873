"""What a run leaves in $INFRAX_ARTIFACTS_DIR: listed in its exit, fetched whole, nothing else reachable."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrax.agent.client import AgentClient, AgentError

from .conftest import AgentProcess
from .test_agent import collect, run_request

Check = Callable[[dict[str, Any]], dict[str, Any]]

LEAVES = r"""#!/bin/sh
cd "$INFRAX_ARTIFACTS_DIR"
mkdir -p reports deep/er
printf '<testsuite failures="1"/>' > reports/junit.xml
head -c 3000000 /dev/urandom > deep/er/blob.bin
echo one > one.txt
ln -s /etc/passwd stolen
ln -s / root
mkfifo pipe
echo "left in $INFRAX_ARTIFACTS_DIR"
exit 3
"""


async def fetch(client: AgentClient, run_id: str, name: str) -> bytes:
    return b"".join([chunk async for chunk in client.fetch_artifact(run_id, name, chunk_size=64 * 1024)])


async def test_a_failed_run_lists_its_regular_files_and_each_comes_back_whole(
    agent: AgentProcess, script: Callable[[str, str], Path], check: Check
) -> None:
    client = agent.client()
    messages = await collect(client.run(run_request("r1", script("leaves.sh", LEAVES))), check)
    exit_message = messages[-1]
    assert exit_message["status"] == "failed" and exit_message["exitCode"] == 3
    assert [(a["name"], a["size"]) for a in exit_message["artifacts"]] == [
        ("one.txt", 4),
        ("deep/er/blob.bin", 3_000_000),
        ("reports/junit.xml", 25),
    ], "regular files only: the links and the FIFO are not artifacts"

    directory = agent.workdir / "runs" / "r1" / "artifacts"
    for name in ("one.txt", "deep/er/blob.bin", "reports/junit.xml"):
        assert await fetch(client, "r1", name) == (directory / name).read_bytes()


@pytest.mark.parametrize(
    "name",
    ["stolen", "root/etc/passwd", "pipe", "../bootstrapper", "/etc/passwd", "deep/../one.txt", "missing"],
)
async def test_nothing_but_the_runs_own_files_can_be_fetched(
    agent: AgentProcess, script: Callable[[str, str], Path], name: str
) -> None:
    client = agent.client()
    await collect(client.run(run_request("r1", script("leaves.sh", LEAVES))))
    with pytest.raises(AgentError) as refused:
        await fetch(client, "r1", name)
    assert refused.value.code == "no-artifact"


async def test_a_link_swapped_in_after_the_listing_is_not_followed(
    agent: AgentProcess, script: Callable[[str, str], Path]
) -> None:
    client = agent.client()
    messages = await collect(client.run(run_request("r1", script("leaves.sh", LEAVES))))
    assert "deep/er/blob.bin" in [a["name"] for a in messages[-1]["artifacts"]]
    # What a process the run left behind could do between the exit and the fetch: the file, and a
    # folder on its path, become links.
    directory = agent.workdir / "runs" / "r1" / "artifacts"
    (directory / "one.txt").unlink()
    (directory / "one.txt").symlink_to("/etc/passwd")
    os.rename(directory / "deep", directory / "moved")
    (directory / "deep").symlink_to(directory / "moved")
    for name in ("one.txt", "deep/er/blob.bin"):
        with pytest.raises(AgentError) as refused:
            await fetch(client, "r1", name)
        assert refused.value.code == "no-artifact"


async def test_only_an_ended_run_of_this_agent_gives_artifacts(
    agent: AgentProcess, script: Callable[[str, str], Path]
) -> None:
    client = agent.client()
    slow = script("slow.sh", '#!/bin/sh\necho x > "$INFRAX_ARTIFACTS_DIR/x"\necho ready\nexec sleep 30\n')
    stream = client.run(run_request("r1", slow))
    async for message in stream:
        if message["type"] == "output" and "ready" in message["data"]:
            break
    with pytest.raises(AgentError) as refused:
        await fetch(client, "r1", "x")
    assert refused.value.code == "unknown-run" and "has not ended" in str(refused.value)
    with pytest.raises(AgentError) as other:
        await fetch(client, "r0", "x")
    assert other.value.code == "unknown-run"
    await stream.cancel()
    await collect(stream)
    assert await fetch(client, "r1", "x") == b"x\n"


async def test_the_next_run_starts_with_an_empty_artifacts_dir(
    agent: AgentProcess, script: Callable[[str, str], Path]
) -> None:
    client = agent.client()
    await collect(client.run(run_request("r1", script("leaves.sh", LEAVES))))
    looks = script("looks.sh", '#!/bin/sh\nls -A "$INFRAX_ARTIFACTS_DIR" | wc -l\n')
    messages = await collect(client.run(run_request("r2", looks)))
    assert "artifacts" not in messages[-1]
    assert [m["data"].strip() for m in messages if m["type"] == "output"] == ["0"]
    with pytest.raises(AgentError):
        await fetch(client, "r1", "one.txt")  # the last run is r2 now


async def stage(client: AgentClient, run_id: str, name: str, content: bytes) -> None:
    async def chunks() -> Any:
        for i in range(0, len(content), 4096):
            yield content[i : i + 4096]

    await client.stage(run_id, name, len(content), chunks())


async def test_a_staged_file_is_in_the_runs_fetches_dir_and_no_one_elses(
    agent: AgentProcess, script: Callable[[str, str], Path]
) -> None:
    client = agent.client()
    await stage(client, "r1", "dist/app.tar.gz", b"the build" * 1000)
    await stage(client, "r1", "dist/app.tar.gz", b"the build, again")  # a restarted executioner's second try
    await stage(client, "other", "secret.txt", b"for another run")
    looks = script("looks.sh", '#!/bin/sh\ncd "$INFRAX_FETCHES_DIR" && find . -type f | sort && cat dist/app.tar.gz\n')
    messages = await collect(client.run(run_request("r1", looks)))
    assert "".join(m["data"] for m in messages if m["type"] == "output") == "./dist/app.tar.gz\nthe build, again"
    assert not (agent.workdir / "staged" / "other").exists(), "what was staged for another run is gone"


async def test_a_link_planted_where_files_are_staged_sends_nothing_elsewhere(
    agent: AgentProcess, script: Callable[[str, str], Path], tmp_path: Path
) -> None:
    client = agent.client()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # What a task could leave for the next run: `staged/<its id>/dist` as a link out.
    (agent.workdir / "staged" / "r2").mkdir(parents=True)
    (agent.workdir / "staged" / "r2" / "dist").symlink_to(elsewhere)
    with pytest.raises(AgentError) as refused:
        await stage(client, "r2", "dist/app.tar.gz", b"x")
    assert refused.value.code == "bad-request" and "cannot stage" in str(refused.value)
    with pytest.raises(AgentError):
        await stage(client, "r2", "../outside", b"x")
    assert list(elsewhere.iterdir()) == []


async def test_a_cache_names_what_it_holds_and_a_bad_checkout_is_infrax_s_failure_not_the_tasks(
    agent: AgentProcess, script: Callable[[str, str], Path], check: Check
) -> None:
    client = agent.client()
    assert await client.source_state("sample") == {"git": [], "hg": []}
    with pytest.raises(AgentError):
        await client.source_state("../etc")
    # A revision neither cached nor staged: the checkout fails, as the infrastructure's failure.
    request = run_request(
        "r1", script("t.sh", "#!/bin/sh\ntrue\n"), checkout={"vcs": "git", "key": "p", "revision": "b" * 40}
    )
    messages = await collect(client.run(request), check)
    assert messages[-1]["status"] == "error" and messages[-1]["infrastructure"] is True
    assert "checkout of bbbbbbbbbbbb" in messages[-1]["message"]
