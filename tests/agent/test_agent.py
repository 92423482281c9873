"""End-to-end tests of the agent and its client: real agent processes, real bootstrappers."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infrax.agent.client import (
    AgentClient,
    AgentConnectionLost,
    AgentError,
    AgentUnauthorized,
    AgentUnreachable,
    RunStream,
)

from .conftest import REPO_ROOT, SCHEMA_DIR, SECRET, AgentProcess, StartAgent

Script = Callable[[str, str], Path]
Check = Callable[[dict[str, Any]], dict[str, Any]]


def process_alive(pid: int) -> bool:
    """True if pid exists and is not a zombie (nothing may reap orphans in a test container)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] != b"Z"


async def collect(stream: RunStream, check: Check | None = None) -> list[dict[str, Any]]:
    messages = []
    async for message in stream:
        messages.append(check(message) if check else message)
    return messages


def outputs(messages: list[dict[str, Any]], stream: str | None = None) -> str:
    return "".join(m["data"] for m in messages if m["type"] == "output" and stream in (None, m["stream"]))


def assert_consecutive(messages: list[dict[str, Any]], start: int = 0) -> None:
    seqs = [m["seq"] for m in messages if m["type"] == "output"]
    assert seqs == list(range(start, start + len(seqs)))


async def read_until(stream: RunStream, text: str) -> list[dict[str, Any]]:
    """Consume messages until the combined output contains text."""
    seen: list[dict[str, Any]] = []
    async for message in stream:
        seen.append(message)
        if text in outputs(seen):
            return seen
    raise AssertionError(f"stream ended before {text!r} appeared: {seen}")


def run_request(run_id: str, bootstrapper: str | Path, **fields: Any) -> dict[str, Any]:
    return {"runId": run_id, "bootstrapper": str(bootstrapper), "maxRunTime": 30, **fields}


# -- basic requests ------------------------------------------------------------


async def test_heartbeat(agent: AgentProcess, check: Check) -> None:
    beat = check(await agent.client().heartbeat())
    assert beat["busy"] is False and beat["runId"] is None and beat["runsCompleted"] == 0
    assert beat["uptime"] >= 0


async def test_passing_run(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script(
        "pass.sh",
        """#!/bin/sh
echo "args: $*"
echo "list: $(tr '\\n' ',' < "$INFRAX_FILES_LIST")"
echo "task: $TASK_VAR run: $INFRAX_RUN_ID"
echo "secret: ${INFRAX_AGENT_SECRET:-unset}"
[ "$(pwd)" = "$INFRAX_WORK_DIR" ] && echo "cwd ok"
[ -d "$INFRAX_REPORT_DIR" ] && echo "report dir ok"
echo "to stderr" >&2
""",
    )
    request = run_request(
        "run/1",
        f"file://{boot}",
        bootstrapperArguments=["-v", "--fast"],
        files=["tests/a.py", "tests/b c.py"],
        env={"TASK_VAR": "hello", "INFRAX_RUN_ID": "overridden-by-agent"},
    )
    messages = await collect(agent.client().run(request), check)

    assert [m["type"] for m in messages[:2]] == ["accepted", "started"]
    assert messages[-1]["type"] == "exit"
    assert_consecutive(messages)
    stdout = outputs(messages, "stdout")
    assert "args: -v --fast tests/a.py tests/b c.py\n" in stdout
    assert "list: tests/a.py,tests/b c.py,\n" in stdout
    assert "task: hello run: run/1\n" in stdout
    assert "secret: unset\n" in stdout  # the agent's secret must not leak to runs
    assert "cwd ok\n" in stdout and "report dir ok\n" in stdout
    assert outputs(messages, "stderr") == "to stderr\n"
    exit_message = messages[-1]
    assert exit_message["status"] == "completed"
    assert exit_message["exitCode"] == 0
    assert exit_message["runId"] == "run/1"
    assert "fileDurations" not in exit_message

    first_dir = agent.workdir / "runs" / "run_1"
    assert first_dir.is_dir()
    # A new run replaces the old run directory.
    messages = await collect(agent.client().run(run_request("run-2", boot)), check)
    assert messages[-1]["status"] == "completed"
    assert not first_dir.exists()
    assert (agent.workdir / "runs" / "run-2").is_dir()
    assert (await agent.client().heartbeat())["runsCompleted"] == 2


async def test_failing_run(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("fail.sh", "echo failing; exit 3\n")  # no shebang: run with /bin/sh
    messages = await collect(agent.client().run(run_request("fail", boot)), check)
    exit_message = messages[-1]
    assert (exit_message["status"], exit_message["exitCode"]) == ("failed", 3)
    assert exit_message["message"] == "exited with code 3"
    assert outputs(messages) == "failing\n"


async def test_a_changed_bootstrapper_is_read_again(agent: AgentProcess, script: Script) -> None:
    boot = script("changes.sh", "echo first\n")
    assert outputs(await collect(agent.client().run(run_request("changes-1", boot)))) == "first\n"
    assert outputs(await collect(agent.client().run(run_request("changes-2", boot)))) == "first\n"
    boot.write_text("echo second, longer\n")  # the agent keeps local bootstrappers until they change
    assert outputs(await collect(agent.client().run(run_request("changes-3", boot)))) == "second, longer\n"
    replacement = boot.with_name("replacement.sh")
    replacement.write_text("echo third, sameish\n")
    assert replacement.stat().st_size == boot.stat().st_size
    os.utime(replacement, ns=(boot.stat().st_atime_ns, boot.stat().st_mtime_ns))
    replacement.replace(boot)  # another file in its place, as `git checkout` does: same size and time
    assert outputs(await collect(agent.client().run(run_request("changes-4", boot)))) == "third, sameish\n"


async def test_killed_by_sigkill_hints_at_oom(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("oom.sh", "#!/bin/sh\nkill -9 $$\n")
    exit_message = (await collect(agent.client().run(run_request("oom", boot)), check))[-1]
    assert exit_message["status"] == "failed"
    assert exit_message["exitCode"] == 137
    assert exit_message["message"] == "killed by SIGKILL (out of memory?)"


async def test_split_multibyte_character_is_decoded(agent: AgentProcess, script: Script) -> None:
    # The two bytes of "é" arrive in separate reads.
    boot = script("utf8.sh", "#!/bin/sh\nprintf '\\303'\nsleep 0.05\nprintf '\\251\\n'\nprintf '\\377\\n' >&2\n")
    messages = await collect(agent.client().run(run_request("utf8", boot)))
    assert outputs(messages, "stdout") == "é\n"
    assert outputs(messages, "stderr") == "\ufffd\n"


async def test_durations_are_reported(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script(
        "durations.sh",
        """#!/bin/sh
printf '{"a.py": 1.5, "b.py": 2, "bad": "x"}' > "$INFRAX_REPORT_DIR/durations.json"
""",
    )
    exit_message = (await collect(agent.client().run(run_request("dur", boot, files=["a.py", "b.py"])), check))[-1]
    assert exit_message["status"] == "completed"
    assert exit_message["fileDurations"] == {"a.py": 1.5, "b.py": 2.0}


async def test_trivial_run_is_fast(agent: AgentProcess, script: Script) -> None:
    boot = script("true.sh", "#!/bin/sh\nexit 0\n")
    client = agent.client()
    elapsed = []
    for index in range(5):
        started = time.perf_counter()
        messages = await collect(client.run(run_request(f"fast-{index}", boot)))
        elapsed.append(time.perf_counter() - started)
        assert messages[-1]["status"] == "completed"
    # Typically ~5 ms over loopback; generous bound for loaded CI machines.
    assert statistics.median(elapsed) < 0.25, elapsed


# -- stopping runs -------------------------------------------------------------

TREE_SCRIPT = """#!/bin/sh
trap '' TERM   # ignored, and inherited by the children: only SIGKILL stops them
sleep 1000 &
echo "child $!"
sh -c 'sleep 1000 & echo "grandchild $!"; wait' &
echo "ready $$"
wait
"""


def tree_pids(messages: list[dict[str, Any]]) -> list[int]:
    return [int(pid) for pid in re.findall(r"(?:child|ready) (\d+)", outputs(messages))]


async def wait_dead(pids: list[int], timeout: float = 10.0) -> list[int]:
    """PIDs still alive after timeout (killed orphans may need a moment to be reaped)."""
    deadline = time.monotonic() + timeout
    while (alive := [pid for pid in pids if process_alive(pid)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return alive


async def test_timeout_kills_process_tree(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("tree.sh", TREE_SCRIPT)
    started = time.monotonic()
    messages = await collect(agent.client().run(run_request("slow", boot, maxRunTime=0.5)), check)
    exit_message = messages[-1]
    assert exit_message["status"] == "timeout"
    assert exit_message["message"] == "exceeded maxRunTime of 0.5s; process tree killed"
    assert exit_message["exitCode"] is None
    # maxRunTime + kill grace (0.3 s), not the 1000 s of sleep.
    assert time.monotonic() - started < 3
    pids = tree_pids(messages)
    assert len(pids) == 3, outputs(messages)
    assert await wait_dead(pids) == []


ESCAPE_SCRIPT = """#!/bin/sh
# Leaves its process group and session, and its parent exits: only the agent (the subreaper) can find it.
sh -c 'setsid sh -c "sleep 1000" & echo "escaped $!"'
echo "ready $$"
"""


async def test_processes_that_left_with_setsid_die_when_the_run_ends(
    agent: AgentProcess, script: Script, check: Check
) -> None:
    messages = await collect(agent.client().run(run_request("escape", script("escape.sh", ESCAPE_SCRIPT))), check)
    assert messages[-1]["status"] == "completed"
    escaped = [int(pid) for pid in re.findall(r"escaped (\d+)", outputs(messages))]
    assert len(escaped) == 1, outputs(messages)
    assert await wait_dead(escaped) == [], "a process of the run outlived it"


async def test_cancel_on_same_connection(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("tree.sh", TREE_SCRIPT)
    async with agent.client().run(run_request("cancel-me", boot)) as stream:
        seen = await read_until(stream, "ready")
        if "grandchild" not in outputs(seen):  # the subshell may print before or after the script
            seen += await read_until(stream, "grandchild")
        await stream.cancel()
        seen += await collect(stream, check)
    exit_message = seen[-1]
    assert exit_message["type"] == "exit"
    assert exit_message["status"] == "cancelled"
    assert await wait_dead(tree_pids(seen)) == []


async def test_cancel_on_new_connection_and_busy(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("sleep.sh", "#!/bin/sh\necho running\nexec sleep 1000\n")
    client = agent.client()
    stream = client.run(run_request("long", boot))
    await read_until(stream, "running")

    beat = await client.heartbeat()
    assert (beat["busy"], beat["runId"]) == (True, "long")
    with pytest.raises(AgentError) as busy:
        await collect(client.run(run_request("second", boot)))
    assert busy.value.code == "busy"
    assert "long" in str(busy.value)

    assert await client.cancel("no-such-run") is False
    assert await client.cancel("long") is True
    exit_message = (await collect(stream, check))[-1]
    assert exit_message["status"] == "cancelled"
    assert (await client.heartbeat())["busy"] is False
    assert await client.cancel("long") is False  # already finished


# -- authentication and bad input ----------------------------------------------


async def test_wrong_secret_is_rejected(agent: AgentProcess) -> None:
    with pytest.raises(AgentUnauthorized) as refused:
        await agent.client(secret="wrong").heartbeat()
    assert refused.value.code == "unauthorized"
    assert f"127.0.0.1:{agent.port}" in str(refused.value)
    with pytest.raises(AgentUnauthorized):
        await collect(agent.client(secret="").run(run_request("x", "/bin/true")))
    # The agent keeps serving correct clients.
    assert (await agent.client().heartbeat())["busy"] is False


async def raw_exchange(agent: AgentProcess, *lines: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_connection(agent.host, agent.port)
    for line in lines:
        writer.write(line)
    await writer.drain()
    answers = [json.loads(line) for line in (await asyncio.wait_for(reader.read(), 5)).splitlines()]
    writer.close()
    return answers


async def test_protocol_errors(agent: AgentProcess, check: Check) -> None:
    hello = json.dumps({"type": "hello", "protocol": 1, "secret": SECRET}).encode() + b"\n"
    cases = [
        ([b"not json\n"], "bad-request", "not valid JSON"),
        ([b'{"type":"heartbeat"}\n'], "bad-request", "expected a hello"),
        ([b'{"type":"hello","protocol":2,"secret":"x"}\n'], "unsupported-protocol", "protocol 1"),
        ([hello, b'{"type":"frobnicate"}\n'], "bad-request", "frobnicate"),
        ([hello, b'{"type":"attach","runId":"nothing"}\n'], "unknown-run", "nothing"),
    ]
    for lines, code, text in cases:
        answers = await raw_exchange(agent, *lines)
        error = check(answers[-1])
        assert (error["type"], error["code"]) == ("error", code), answers
        assert text in error["message"]
    oversized = await raw_exchange(agent, b'{"type":"hello","secret":"' + b"x" * (1024 * 1024 + 10) + b'"}\n')
    assert oversized[-1]["code"] == "bad-request" and "exceeds" in oversized[-1]["message"]


async def test_invalid_run_requests_name_the_field(agent: AgentProcess) -> None:
    client = agent.client()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"runId": "r", "bootstrapper": "/bin/true"}, "maxRunTime"),
        ({"runId": "r", "bootstrapper": "relative/path", "maxRunTime": 1}, "bootstrapper"),
        ({"runId": "", "bootstrapper": "/bin/true", "maxRunTime": 1}, "runId"),
        ({"runId": "r", "bootstrapper": "/bin/true", "maxRunTime": 1, "files": [1]}, "files[0]"),
        ({"runId": "r", "bootstrapper": "/bin/true", "maxRunTime": 1, "env": {"A": 1}}, "env.A"),
    ]
    for request, field_name in cases:
        with pytest.raises(AgentError) as error:
            await collect(client.run(request))
        assert error.value.code == "bad-request"
        assert f"'{field_name}'" in error.value.message


async def test_unreachable_agent(tmp_path: Path) -> None:
    client = AgentClient("127.0.0.1", 1, SECRET, connect_timeout=1)
    with pytest.raises(AgentUnreachable, match=r"127\.0\.0\.1:1"):
        await client.heartbeat()


# -- bootstrapper sources ------------------------------------------------------


async def test_http_bootstrappers(agent: AgentProcess, http_root: tuple[Path, str], check: Check) -> None:
    root, base = http_root
    (root / "boot.sh").write_text("#!/bin/sh\necho fetched over http\n")
    client = agent.client()
    messages = await collect(client.run(run_request("http-ok", f"{base}/boot.sh")), check)
    assert messages[-1]["status"] == "completed"
    assert outputs(messages) == "fetched over http\n"

    messages = await collect(client.run(run_request("http-404", f"{base}/missing.sh")), check)
    exit_message = messages[-1]
    assert [m["type"] for m in messages] == ["accepted", "exit"]
    assert exit_message["status"] == "error"
    assert exit_message["exitCode"] is None
    assert "404" in exit_message["message"] and f"{base}/missing.sh" in exit_message["message"]


async def test_bootstrapper_errors(agent: AgentProcess, script: Script, tmp_path: Path, check: Check) -> None:
    client = agent.client()
    missing = tmp_path / "does-not-exist.sh"
    exit_message = (await collect(client.run(run_request("missing", missing)), check))[-1]
    assert exit_message["status"] == "error"
    assert exit_message["message"] == f"bootstrapper {missing} not found"

    bad_interpreter = script("bad.sh", "#!/nonexistent/interpreter\n")
    exit_message = (await collect(client.run(run_request("bad-interp", bad_interpreter)), check))[-1]
    assert exit_message["status"] == "error"
    assert "could not execute bootstrapper" in exit_message["message"]
    assert "/nonexistent/interpreter" in exit_message["message"]


# -- reconnecting --------------------------------------------------------------


async def test_attach_after_disconnect(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("attach.sh", "#!/bin/sh\necho one\nsleep 0.3\necho two\necho three >&2\n")
    client = agent.client()
    stream = client.run(run_request("reattach", boot))
    await read_until(stream, "one")
    await stream.aclose()  # network blip: no cancel, the run goes on

    messages = await collect(client.attach("reattach"), check)
    assert messages[0]["type"] == "started"
    assert messages[-1]["status"] == "completed"
    assert_consecutive(messages)
    assert outputs(messages, "stdout") == "one\ntwo\n"
    assert outputs(messages, "stderr") == "three\n"

    # The finished run can still be attached, also from a later seq.
    again = await collect(client.attach("reattach", from_seq=1), check)
    assert next(m["seq"] for m in again if m["type"] == "output") == 1
    assert again[-1] == messages[-1]

    with pytest.raises(AgentError) as unknown:
        await collect(client.attach("other"))
    assert unknown.value.code == "unknown-run"


async def test_attach_reports_dropped_output(start_agent: StartAgent, script: Script, check: Check) -> None:
    agent = await start_agent("--max-buffered-messages", "3")
    boot = script(
        "chatty.sh",
        "#!/bin/sh\nfor i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; sleep 0.01; done\necho last\n",
    )
    client = agent.client()
    stream = client.run(run_request("chatty", boot))
    await stream.__anext__()  # accepted
    await stream.aclose()
    # Attach only after the run has finished, so the early output is gone.
    while (await client.heartbeat())["runsCompleted"] == 0:
        await asyncio.sleep(0.02)
    messages = await collect(client.attach("chatty"), check)
    assert messages[-1]["status"] == "completed"
    kinds = [m["type"] for m in messages]
    assert kinds[:2] == ["started", "gap"], kinds
    gap = messages[1]
    assert gap["from"] == 0 and gap["to"] >= 0
    assert len([m for m in messages if m["type"] == "output"]) == 3
    assert_consecutive(messages, gap["to"] + 1)
    assert outputs(messages, "stdout").endswith("last\n")


# -- agent lifecycle -----------------------------------------------------------


async def test_agent_killed_mid_run(agent: AgentProcess, script: Script) -> None:
    boot = script("sleep.sh", '#!/bin/sh\necho "pid $$"\nexec sleep 1000\n')
    stream = agent.client().run(run_request("orphaned", boot))
    seen = await read_until(stream, "pid")
    pid = int(re.search(r"pid (\d+)", outputs(seen)).group(1))  # type: ignore[union-attr]
    agent.extra_pgids.append(pid)  # the orphaned run is cleaned up by the fixture
    agent.expect_clean_exit = False
    agent.process.kill()
    with pytest.raises(AgentConnectionLost, match="orphaned"):
        await collect(stream)


async def test_sigterm_cancels_run_and_exits(agent: AgentProcess, script: Script, check: Check) -> None:
    boot = script("tree.sh", TREE_SCRIPT)
    stream = agent.client().run(run_request("shutdown", boot))
    seen = await read_until(stream, "grandchild")
    agent.process.send_signal(signal.SIGTERM)
    seen += await collect(stream, check)
    assert seen[-1]["status"] == "cancelled"
    assert "shutting down" in seen[-1]["message"]
    assert await asyncio.wait_for(agent.process.wait(), 3) == 0
    assert await wait_dead(tree_pids(seen)) == []


async def test_agent_exits_when_parent_dies(start_agent: StartAgent) -> None:
    parent = await asyncio.create_subprocess_exec("sleep", "1000")
    agent = await start_agent("--parent-pid", str(parent.pid))
    assert (await agent.client().heartbeat())["busy"] is False
    parent.kill()
    await parent.wait()
    assert await asyncio.wait_for(agent.process.wait(), 4) == 0


async def test_agent_refuses_to_start_without_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "INFRAX_AGENT_SECRET"}
    env["PYTHONPATH"] = str(REPO_ROOT)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infrax.agent",
        "--workdir",
        str(tmp_path / "w"),
        env=env,
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 10)
    assert process.returncode == 2
    assert stdout == b""
    assert b"INFRAX_AGENT_SECRET" in stderr


# -- schemas -------------------------------------------------------------------


def test_schemas_are_valid_draft_2020_12() -> None:
    from jsonschema import Draft202012Validator

    files = sorted(SCHEMA_DIR.glob("*.json"))
    assert files
    for path in files:
        schema = json.loads(path.read_text())
        Draft202012Validator.check_schema(schema)
        assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        assert schema["$id"] == f"https://infrax.dev/schemas/agent/v1/{path.name}"


def test_client_messages_match_schemas(validators: dict[str, Any]) -> None:
    examples = {
        "hello": {"type": "hello", "protocol": 1, "secret": "s"},
        "heartbeat-request": {"type": "heartbeat"},
        "run": {"type": "run", **run_request("r", "https://example.com/b.sh", files=["a"], env={"A": "b"})},
        "cancel": {"type": "cancel", "runId": "r"},
        "attach": {"type": "attach", "runId": "r", "fromSeq": 3},
        "fetch-artifact": {"type": "fetch-artifact", "runId": "r", "name": "reports/junit.xml"},
        "stage": {"type": "stage", "runId": "r", "name": "dist/app.tar.gz", "size": 10},
        "source-state-request": {"type": "source-state", "key": "sample"},
        "run-with-checkout": {
            "type": "run",
            **run_request("r", "/b.sh", checkout={"vcs": "git", "key": "sample", "revision": "a" * 40}),
        },
    }
    for name, message in examples.items():
        validators[name.removesuffix("-with-checkout")].validate(message)
        validators["client-message"].validate(message)
