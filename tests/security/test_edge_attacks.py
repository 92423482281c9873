"""Rows 8–14 of the outside-in probe (docs/security.md), each made again as the attack: what a
stranger on the network sends before and around authentication."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

from tests.e2e.conftest import script, start_up, task, wait_healthy, write_up_config
from tests.jobmaster.conftest import GITHUB_REPOSITORY, SECRET, deliver, make_hello_world

MIB = 1024 * 1024


async def test_a_body_without_a_token_is_refused_before_a_byte_of_it_is_parsed(start_stack) -> None:
    infrax = await start_stack()
    stranger = httpx.AsyncClient(base_url=infrax.stack.urls["scheduler"], timeout=30)
    try:
        # Unparsable, wrongly typed, or an empty object: without a token each is a 401, never 400 or 422.
        for body in (b"{not json", b'{"tasks": 42}', b"{}"):
            answer = await stranger.post(
                "/api/v1/task-requests", content=body, headers={"Content-Type": "application/json"}
            )
            assert answer.status_code == 401, (body, answer.text)
        forged = await stranger.post(
            "/api/v1/task-requests", content=b"{", headers={"Authorization": "Bearer ifx_forged"}
        )
        assert forged.status_code == 401
    finally:
        await stranger.aclose()


async def _chunks(total: int, size: int = MIB) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(size, total - sent)
        sent += size


async def test_a_chunked_body_past_the_limit_is_a_413_as_it_streams(start_stack) -> None:
    infrax = await start_stack()
    # With the admin's token: the limit holds for whoever sends, and is told as such, not as a 400.
    too_big = await infrax["scheduler"].post(
        "/api/v1/task-requests", content=_chunks(40 * MIB), headers={"Content-Type": "application/json"}
    )
    assert too_big.status_code == 413 and "larger than" in too_big.json()["detail"]
    assert (await infrax["scheduler"].get("/api/v1/task-requests")).json() == []
    # Still answering, with nothing lost.
    ok = script(Path(infrax.stack.config.data_dir).parent, "ok.sh", "exit 0\n")
    done = await infrax.wait_request((await infrax.submit([task("ok", ok)]))["id"])
    assert done.state == "completed"


async def test_a_cross_site_form_cannot_sign_a_viewer_in(start_stack) -> None:
    infrax = await start_stack()
    async with httpx.AsyncClient(base_url=infrax.stack.urls["web"], timeout=30) as browser:
        forged = await browser.post(
            "/login",
            data={"token": "ifx_attackers_own", "next": "/"},
            headers={"Origin": "https://evil.example"},
        )
        assert forged.status_code == 403 and "infrax_token" not in forged.headers.get("set-cookie", "")
        from_another_site = await browser.post(
            "/login", data={"token": "ifx_attackers_own"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert from_another_site.status_code == 403
        # An action with the dashboard's own header, from another origin, is refused too.
        action = await browser.post(
            "/actions/jobs/abc/cancel", headers={"Origin": "https://evil.example", "X-Infrax-Action": "1"}
        )
        assert action.status_code == 403
        # The dashboard's own page signs in.
        own = await browser.post(
            "/login",
            data={"token": infrax.stack.admin_token, "next": "/"},
            headers={"Origin": infrax.stack.urls["web"]},
        )
        assert own.status_code == 303 and "infrax_token" in own.headers["set-cookie"]


async def test_the_dashboard_answers_only_its_own_host_names_and_keeps_metrics_to_readers(start_stack) -> None:
    infrax = await start_stack()
    async with httpx.AsyncClient(base_url=infrax.stack.urls["web"], timeout=30) as browser:
        rebound = await browser.get("/login", headers={"Host": "evil.example"})
        assert rebound.status_code == 400
        assert (await browser.get("/metrics")).status_code == 401
        reader = {"Authorization": f"Bearer {infrax.stack.admin_token}"}
        metrics = await browser.get("/metrics", headers=reader)
        assert metrics.status_code == 200 and "infrax_bus" in metrics.text


async def test_nul_bytes_and_huge_strings_in_paths_and_file_patterns_are_refused(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    ok = script(tmp_path, "ok.sh", "exit 0\n")
    huge = "a" * 1_000_000
    for field, value in (
        ("paths", ["src/\u0000evil"]),
        ("paths", [huge]),
        ("filePatterns", {"tests/\u0000*.py": 1}),
        ("filePatterns", {huge: 1}),
    ):
        answer = await infrax["scheduler"].post(
            "/api/v1/task-requests", json={"tasks": [task("t", ok, **{field: value})]}
        )
        assert answer.status_code == 422 and f"tasks.0.{field}" in answer.json()["detail"], (field, answer.text[:300])
    assert (await infrax["scheduler"].get("/api/v1/task-requests")).json() == []


async def test_a_log_offset_at_the_documented_maximum_reads_nothing_without_an_error(
    start_stack, tmp_path: Path
) -> None:
    infrax = await start_stack()
    say = script(tmp_path, "say.sh", "echo hello\n")
    request = await infrax.wait_request((await infrax.submit([task("say", say)]))["id"])
    partition = request.tasks[0].partitions[0]
    url = f"/api/v1/runs/{partition.id}-{partition.run}/log"
    far = await infrax["executioner"].get(url, params={"offset": 2**62})
    assert far.status_code == 200 and far.content == b""
    assert far.headers["X-Log-Complete"] == "true"
    assert (await infrax["executioner"].get(url, params={"offset": 2**62 + 1})).status_code == 422


async def test_a_signed_webhook_nested_100000_deep_is_a_400(start_stack, tmp_path: Path) -> None:
    repo = tmp_path / "Hello-World"
    make_hello_world(repo)
    infrax = await start_stack(github_secrets={GITHUB_REPOSITORY: SECRET})
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    nested_payload = json.dumps({"action": "opened", "x": json.loads("[" * 100 + "]" * 100)}).encode()
    for body in (deep, nested_payload):
        answer = await deliver(infrax["jobmaster"], "pull_request", body, f"d-{len(body)}")
        assert answer.status_code == 400 and "nested deeper than 64" in answer.json()["detail"], answer.text[:300]
    assert (await infrax["jobmaster"].get("/api/v1/jobs")).json() == []


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak since it was last reset) of a process, in bytes."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) * 1024 for name in ("VmRSS", "VmHWM")}


async def test_refused_bodies_leave_infrax_up_at_its_idle_memory(tmp_path: Path) -> None:
    config, ports = write_up_config(tmp_path)
    process = start_up(config, tmp_path / "up.log")
    url = f"http://127.0.0.1:{ports['scheduler']}"
    try:
        await wait_healthy(url, process)
        idle = _memory(process.pid)["VmRSS"]
        Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak starts again from now
        async with httpx.AsyncClient(base_url=url, timeout=60) as stranger:
            for i in range(25):
                body: bytes | AsyncIterator[bytes] = b"{" * (40 * MIB) if i % 2 else _chunks(40 * MIB)
                try:
                    answer = await stranger.post(
                        "/api/v1/task-requests", content=body, headers={"Content-Type": "application/json"}
                    )
                except httpx.TransportError:
                    continue  # the server answered and closed before the client finished sending
                assert answer.status_code in (401, 413), answer.text
        after = _memory(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"idle {idle / MIB:.0f} MiB, peak {after['VmHWM'] / MIB:.0f} MiB, after {after['VmRSS'] / MIB:.0f} MiB")
    assert after["VmHWM"] - idle < 50 * MIB, f"peak {after['VmHWM'] / MIB:.0f} MiB, idle {idle / MIB:.0f} MiB"
    assert after["VmRSS"] - idle < 50 * MIB
