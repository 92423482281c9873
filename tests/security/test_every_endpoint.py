"""Every operation of every component's OpenAPI: 401 without a token, 403 with one lacking its scope.

Walked from the OpenAPI documents themselves, so an endpoint added later is checked too; the only
operations open to anyone are the two listed in PUBLIC (a webhook is signed instead).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrax.config import CORE_COMPONENTS as COMPONENTS
from infrax.config import Config, ProviderConfig
from infrax.stack import Stack

PUBLIC = {
    ("jobmaster", "post", "/api/v1/github/webhook"),
    *((component, "get", "/api/v1/health") for component in COMPONENTS),
}
# What a path parameter is given: a value of the right shape, for a thing that does not exist.
SAMPLE = {"run_id": "a0-0", "path": "ci/run.sh"}

# No task runs here: the containers' folders may stay in pytest's private folder.
NO_TASKS = [ProviderConfig("process", options={"run_as": "self"})]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    # The five with APIs; the dashboard (web) forwards each viewer's token to them: tests/e2e/test_dashboard.py.
    made = Stack(
        Config(data_dir=tmp_path / "data", ports=dict.fromkeys(COMPONENTS, 0), providers=NO_TASKS),
        components=COMPONENTS,
        serve=False,
    )
    await made.start()
    try:
        yield made
    finally:
        await made.stop()


def operations(stack: Stack) -> list[tuple[str, str, str]]:
    found = []
    for component, app in stack.apps.items():
        for path, methods in app.openapi()["paths"].items():
            found += [(component, method, path) for method in methods]
    return sorted(found)


async def call(stack: Stack, component: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    concrete = re.sub(r"\{(\w+)(:path)?\}", lambda m: SAMPLE.get(m.group(1), "a0"), path)
    transport = httpx.ASGITransport(app=stack.apps[component])
    async with httpx.AsyncClient(transport=transport, base_url=stack.urls[component]) as client:
        return await client.request(method, concrete, headers=headers, json={} if method != "get" else None)


async def test_every_operation_needs_a_token_and_its_scope(stack: Stack) -> None:
    assert stack.tokens is not None
    _, nobody = await stack.tokens.create("holds nothing", [])
    _, unrelated = await stack.tokens.create("holds another component's scope", ["optimizer:read"])
    walked = operations(stack)
    assert len(walked) > 30 and set(PUBLIC) <= set(walked)
    problems: list[Any] = []
    for component, method, path in walked:
        if (component, method, path) in PUBLIC:
            continue
        anonymous = await call(stack, component, method, path, {})
        if anonymous.status_code != 401:
            problems.append((component, method, path, "no token", anonymous.status_code))
        forged = await call(stack, component, method, path, {"Authorization": "Bearer ifx_0000_not-a-token"})
        if forged.status_code != 401:
            problems.append((component, method, path, "invalid token", forged.status_code))
        for token in (nobody, unrelated):
            if (
                component == "optimizer"
                and path in ("/api/v1/history", "/api/v1/overheads", "/api/v1/container-starts", "/metrics")
                and token == unrelated
            ):
                continue  # that one it holds
            refused = await call(stack, component, method, path, {"Authorization": f"Bearer {token}"})
            if refused.status_code != 403 or "missing scope" not in refused.json().get("detail", ""):
                problems.append((component, method, path, "no scope", refused.status_code, refused.text[:200]))
    assert problems == []


async def test_the_public_operations_answer_without_a_token(stack: Stack) -> None:
    for component in COMPONENTS:
        assert (await call(stack, component, "get", "/api/v1/health", {})).status_code == 200
    # Unsigned, so refused, but by the webhook's own check rather than for want of a token.
    webhook = await call(stack, "jobmaster", "post", "/api/v1/github/webhook", {})
    assert webhook.status_code not in (401, 403) or "token" not in webhook.text


async def test_a_request_for_another_host_name_is_refused(stack: Stack) -> None:
    # A page that DNS rebinding points at 127.0.0.1 still names its own host.
    assert stack.admin_token is not None
    admin = {"Authorization": f"Bearer {stack.admin_token}"}
    for component in COMPONENTS:
        ours = await call(stack, component, "get", "/api/v1/health", admin)
        theirs = await call(stack, component, "get", "/api/v1/health", {**admin, "Host": "evil.example"})
        assert (ours.status_code, theirs.status_code) == (200, 400), component


async def test_a_revoked_or_expired_token_is_refused(stack: Stack) -> None:
    assert stack.tokens is not None
    token_id, token = await stack.tokens.create("short-lived", ["scheduler:read"])
    headers = {"Authorization": f"Bearer {token}"}
    assert (await call(stack, "scheduler", "get", "/api/v1/task-requests", headers)).status_code == 200
    assert await stack.tokens.revoke(token_id)
    assert (await call(stack, "scheduler", "get", "/api/v1/task-requests", headers)).status_code == 401
    _, expired = await stack.tokens.create("expired", ["scheduler:read"], expires_in=-1)
    expired_headers = {"Authorization": f"Bearer {expired}"}
    assert (await call(stack, "scheduler", "get", "/api/v1/task-requests", expired_headers)).status_code == 401


async def test_a_project_scope_admits_that_project_only(stack: Stack, tmp_path: Path) -> None:
    assert stack.tokens is not None
    _, token = await stack.tokens.create("sample's pusher", ["scheduler:create-task-request:sample"])
    headers = {"Authorization": f"Bearer {token}"}
    script = tmp_path / "ok.sh"
    script.write_text("#!/bin/sh\n")
    task = {"name": "t", "files": ["a"], "containerTag": ["linux_x86_64"], "bootstrapper": str(script)}
    transport = httpx.ASGITransport(app=stack.apps["scheduler"])
    async with httpx.AsyncClient(transport=transport, base_url=stack.urls["scheduler"], headers=headers) as client:
        mine = await client.post("/api/v1/task-requests", json={"project": "sample", "tasks": [task]})
        theirs = await client.post("/api/v1/task-requests", json={"project": "other", "tasks": [task]})
    assert mine.status_code == 201, mine.text
    assert theirs.status_code == 403 and "scheduler:create-task-request:other" in theirs.json()["detail"]


async def test_public_read_opens_the_read_only_operations_and_nothing_else(tmp_path: Path) -> None:
    stack = Stack(
        Config(data_dir=tmp_path / "data", ports=dict.fromkeys(COMPONENTS, 0), public_read=True, providers=NO_TASKS),
        components=COMPONENTS,
        serve=False,
    )
    await stack.start()
    try:
        opened, closed = [], []
        for component, method, path in operations(stack):
            if (component, method, path) in PUBLIC:
                continue
            status = (await call(stack, component, method, path, {})).status_code
            (closed if status in (401, 403) else opened).append((component, method, path))
        assert opened and all(method == "get" for _, method, _ in opened)
        # A repository's content stays behind a token: its files, and the source a cache is sent.
        content = {"/api/v1/jobs/{job_id}/files/{path}", "/api/v1/jobs/{job_id}/source"}
        assert {("jobmaster", "get", path) for path in content} <= set(closed)
        assert all(method != "get" for _, method, path in closed if path not in content)
    finally:
        await stack.stop()
