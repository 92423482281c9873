"""Fixtures of the job master's suites: code-host payloads, a recording GitHub API, local repositories."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from yarl import URL

from infrax.jobmaster.github import signature
from tests.conftest import fresh_postgres_url, shared_path
from tests.e2e.conftest import start_stack  # noqa: F401  (the fixture)

SECRET = "It's a Secret to Everybody"
GITHUB_REPOSITORY = "Codertocat/Hello-World"
CLONE_URL = "https://github.com/Codertocat/Hello-World.git"
HG = str(Path(sys.executable).parent / "hg")


@pytest.fixture
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """SQLite and the in-process bus, unless a test asks for `postgresql+rabbitmq` (indirect parametrize).

    The job master's own logic is the same on both; the tests that touch its tables run on both.
    """
    if getattr(request, "param", "embedded") == "embedded":
        yield {}
        return
    amqp = URL(request.getfixturevalue("rabbitmq_url"))
    async for db in fresh_postgres_url():
        yield {"db": db, "bus": str(amqp.update_query(queue_prefix=f"t{uuid.uuid4().hex[:8]}."))}


BOTH_BACKENDS = pytest.mark.parametrize("backend", ["embedded", "postgresql+rabbitmq"], indirect=True)


def payload(name: str) -> bytes:
    """A real webhook payload from ../shared/reference/github-webhooks, as GitHub sent it."""
    return shared_path("reference", "github-webhooks", name).read_bytes()


def with_revision(body: bytes, old: str, new: str) -> bytes:
    """The payload with `old` (its head revision) replaced by a local commit's id, nothing else changed."""
    assert old.encode() in body
    return body.replace(old.encode(), new.encode())


def pulse_job_schema() -> dict[str, Any]:
    return yaml.safe_load(shared_path("reference", "treeherder", "pulse-job.yml").read_text())


async def deliver(
    client: httpx.AsyncClient, event: str, body: bytes, delivery: str, secret: str | None = SECRET, **headers: str
) -> httpx.Response:
    sent = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/test",
        **headers,
    }
    if secret is not None:
        sent.setdefault("X-Hub-Signature-256", signature(secret, body))
    return await client.post("/api/v1/github/webhook", content=body, headers=sent)


async def wait_for(condition: Callable[[], Awaitable[Any]], timeout: float = 30, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def job_in(client: httpx.AsyncClient, job_id: str, *states: str, timeout: float = 30) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return job if job["state"] in states else None

    return await wait_for(reached, timeout, f"job {job_id} to be {'/'.join(states)}")  # type: ignore[no-any-return]


# -- a GitHub API that records what it is sent -------------------------------------------------


class RecordingGitHub:
    """Records every status posted; refuses the first `refuse_first` with a 502, as GitHub under load."""

    def __init__(self, refuse_first: int = 0) -> None:
        self.requests: list[dict[str, Any]] = []
        self.refused: list[dict[str, Any]] = []
        recorded, refused = self.requests, self.refused

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(refused) < refuse_first:
                    refused.append({"path": self.path, "body": json.loads(raw or b"null")})
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                recorded.append(
                    {
                        "method": "POST",
                        "path": self.path,
                        "headers": dict(self.headers.items()),
                        "body": json.loads(raw or b"null"),
                    }
                )
                answer = json.dumps({"id": len(recorded), "state": "created"}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github_api() -> Iterator[RecordingGitHub]:
    server = RecordingGitHub()
    yield server
    server.close()


# -- a local repository standing in for Codertocat/Hello-World --------------------------------

FAST = """version: 1
project: hello-world
tasks:
  - name: unit
    containerTag: linux_x86_64
    bootstrapper: ci/run.sh
    bootstrapperArguments: ["--revision={revision}"]
    files: ["src/app.py"]
    paths: ["src", "ci", ".infrax.yml"]
    maxRunTime: 60
"""
SLOW = FAST.replace("ci/run.sh", "ci/slow.sh").replace("maxRunTime: 60", "maxRunTime: 120\n    retries: 0")


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
        if name.endswith(".sh"):
            (repo / name).chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def make_hello_world(path: Path) -> dict[str, str]:
    """master: base, code change, docs-only change; branch `changes` (the pull request): two commits."""
    path.mkdir(parents=True)
    git(path, "init", "--quiet", "--initial-branch=master")
    git(path, "config", "user.email", "octocat@infrax.invalid")
    git(path, "config", "user.name", "Codertocat")
    ids = {
        "base": commit(
            path,
            {
                ".infrax.yml": FAST,
                "ci/run.sh": '#!/bin/sh\necho "testing $*"\n',
                "ci/slow.sh": "#!/bin/sh\necho started\nsleep 120\n",
                "src/app.py": "print('hello')\n",
                "README.md": "# Hello-World\n",
            },
            "base",
        )
    }
    ids["code"] = commit(path, {"src/app.py": "print('hello, world')\n"}, "change the code")
    ids["docs"] = commit(path, {"docs/guide.md": "# Guide\n"}, "document it")
    git(path, "checkout", "--quiet", "-b", "changes", ids["base"])
    ids["pr1"] = commit(path, {".infrax.yml": SLOW, "src/feature.py": "FEATURE = 1\n"}, "a slow feature")
    ids["pr2"] = commit(path, {"src/feature.py": "FEATURE = 2\n"}, "a better feature")
    git(path, "checkout", "--quiet", "master")
    return ids


def github_config(repo: Path, api: RecordingGitHub | None = None, **overrides: Any) -> dict[str, Any]:
    return {
        "github_secrets": {GITHUB_REPOSITORY: SECRET},
        "url_rewrites": [{"prefix": CLONE_URL, "replacement": str(repo)}],
        "github_api_url": api.url if api else "http://127.0.0.1:9",
        "github_token": "t0ken",
        **overrides,
    }
