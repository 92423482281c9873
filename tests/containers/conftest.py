"""Fixtures for tests on real containers: Podman's Engine API, the agent image, providers, bootstrappers.

`scripts/setup-podman.sh` and the image build run once per session (the first image build takes
about a minute, later sessions find it cached). Without Podman these tests are skipped, unless
CI is set: there a missing engine fails them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.server
import os
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest

from infrax.agent.client import AgentClient
from infrax.config import ProviderConfig
from infrax.model import ContainerType
from infrax.provisioner.image import ImageError, ensure_agent_image
from infrax.provisioner.providers import ContainerProvider, Endpoint, ProviderError, make_provider
from tests.containers.tls_engine import Certificates, front, make_certificates, tls_options

REPO_ROOT = Path(__file__).resolve().parents[2]
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-podman.sh"
SOCKET = "/run/infrax-podman.sock"
SECRET = "container-test-secret-0123456789"
# docker-tls: the same engine as another host's, over TLS with a client certificate (tls_engine.py).
PROVIDER_KINDS = ["process", "docker", "docker-tls"]

MakeProvider = Callable[..., ContainerProvider]


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"real containers are required in CI (CI is set): {reason}", pytrace=False)
    pytest.skip(f"no container engine: {reason}")


@pytest.fixture(scope="session")
def docker_url() -> str:
    """An Engine API endpoint: INFRAX_DOCKER_URL, or Podman set up here by scripts/setup-podman.sh."""
    if os.environ.get("INFRAX_DOCKER_URL"):
        return os.environ["INFRAX_DOCKER_URL"]
    if os.geteuid() != 0:
        _unavailable("scripts/setup-podman.sh needs root (or set INFRAX_DOCKER_URL)")
    try:
        result = subprocess.run(
            ["sh", str(SETUP_SCRIPT)],
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "INFRAX_PODMAN_SOCKET": SOCKET},
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        _unavailable(f"{SETUP_SCRIPT} did not run: {error}")
    if result.returncode != 0:
        _unavailable(f"{SETUP_SCRIPT} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")
    return f"unix://{SOCKET}"


@pytest.fixture(scope="session")
def agent_image(docker_url: str, docker_client: Any) -> str:
    try:
        ref = ensure_agent_image(docker_url)
    except ImageError as error:
        _unavailable(f"the agent image could not be built: {error}")
    _sweep_stale_test_containers(docker_client)
    return ref


def _sweep_stale_test_containers(client: Any) -> None:
    """Remove what killed test sessions left: test owners' containers older than a whole suite run."""
    cutoff = time.time() - 15 * 60
    for summary in client.api.containers(all=True, filters={"label": "infrax.owner"}):
        if summary["Labels"]["infrax.owner"].startswith("test-") and summary["Created"] < cutoff:
            with contextlib.suppress(Exception):
                client.api.remove_container(summary["Id"], v=True, force=True)


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"), "127.0.0.1")


@pytest.fixture(scope="session")
def tls_engine(docker_url: str, tls_certificates: Certificates) -> Iterator[dict[str, str]]:
    """The options of a docker provider on the engine as another host's: TLS, a client certificate."""
    if not docker_url.startswith("unix://"):
        pytest.skip(f"the TLS front stands before a unix:// engine, not {docker_url}")
    with front(tls_certificates, "127.0.0.1:0", docker_url.removeprefix("unix://")) as port:
        yield tls_options(tls_certificates, f"tcp://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def docker_client(docker_url: str) -> Iterator[Any]:
    """A plain Docker SDK client, for doing things to containers behind the provider's back."""
    import docker

    client = docker.DockerClient(base_url=docker_url, version="1.41")
    yield client
    client.close()


@pytest.fixture
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeProvider]:
    """Factory of providers by kind; whatever they (or their predecessors) left running is removed."""
    made: list[ContainerProvider] = []
    # Unique per test: concurrent test sessions on one engine must not see each other's containers.
    owner = f"test-{uuid.uuid4().hex[:10]}"

    def build(kind: str, name: str | None = None, **options: Any) -> ContainerProvider:
        if kind == "docker-tls":
            kind, options = "docker", {**request.getfixturevalue("tls_engine"), **options}
        if kind == "docker":
            options = {
                "url": request.getfixturevalue("docker_url"),
                "owner": owner,
                "image": request.getfixturevalue("agent_image"),
                "kill_grace": 0.5,
                **options,
            }
        else:
            options = {"root": str(tmp_path / "containers"), "kill_grace": 0.5, "run_as": "self", **options}
        provider = make_provider(kind, name or kind, None, options)
        made.append(provider)
        return provider

    yield build

    for provider in made:
        try:
            await asyncio.gather(*(provider.destroy(c) for c in await provider.list()))
        except ProviderError:
            pass  # a test of an unreachable engine
        finally:
            await provider.close()


@pytest.fixture(params=PROVIDER_KINDS)
def provider(request: pytest.FixtureRequest, make: MakeProvider) -> ContainerProvider:
    """One provider of each kind: the contract tests run on every implementation."""
    return make(request.param)


@pytest.fixture
def container_type() -> ContainerType:
    return ContainerType(
        name="linux_x86_64", tags=["linux_x86_64"], providers=["process", "docker"], memory="256m", cpus=1.0
    )


@pytest.fixture
def new_id() -> Callable[[], str]:
    return lambda: f"t{uuid.uuid4().hex[:12]}"


class Bootstrappers:
    """Scripts served over HTTP on the host's 127.0.0.1, the way the job master serves them."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.base = ""

    def add(self, name: str, body: str) -> str:
        self.files[f"/{name}"] = body.encode()
        return f"{self.base}/{name}"


@pytest.fixture(scope="session")
def bootstrappers() -> Iterator[Bootstrappers]:
    served = Bootstrappers()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served.files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield served
    server.shutdown()
    server.server_close()


RunToExit = Callable[..., Awaitable[tuple[dict[str, Any], str]]]


@pytest.fixture
def run_to_exit() -> RunToExit:
    """Run a bootstrapper on an agent; returns (exit message, stdout+stderr text)."""

    async def run(
        endpoint: Endpoint, bootstrapper: str, *arguments: str, timeout: float = 60, inline: bool = True
    ) -> tuple[dict[str, Any], str]:
        """`inline`: the bootstrapper's content goes with the request, as the executioner sends the
        job master's (a container without a network could not fetch it); else the agent fetches it."""
        client = AgentClient(endpoint.host, endpoint.port, SECRET)
        output: list[str] = []
        request: dict[str, Any] = {
            "runId": f"r{uuid.uuid4().hex[:8]}",
            "bootstrapper": bootstrapper,
            "maxRunTime": timeout,
            "bootstrapperArguments": list(arguments),
        }
        if inline:
            async with httpx.AsyncClient() as http:
                content = (await http.get(bootstrapper)).raise_for_status().content
            request["bootstrapperContent"] = base64.b64encode(content).decode()
        async with asyncio.timeout(timeout + 10):
            async with client.run(request) as stream:
                async for message in stream:
                    if message["type"] == "output":
                        output.append(message["data"])
        assert stream.exit is not None
        return stream.exit, "".join(output)

    return run


@pytest.fixture
def scripts(tmp_path: Path) -> Path:
    folder = tmp_path / "scripts"
    folder.mkdir()
    return folder


@pytest.fixture
def docker_provider(docker_url: str, agent_image: str, scripts: Path) -> Any:
    owner = f"test-{uuid.uuid4().hex[:10]}"

    def make(name: str, capacity: int | None = None, **options: Any) -> ProviderConfig:
        # The bootstrappers are on the host: mount their folder (only it) read-only at the same path.
        return ProviderConfig(
            name,
            kind="docker",
            capacity=capacity,
            options={
                "url": docker_url,
                "image": agent_image,
                "owner": owner,
                "extra_mounts": [str(scripts)],
                **options,
            },
        )

    return make
