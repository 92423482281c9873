"""A `docker` provider on another host's engine: TLS with a client certificate or nothing (plain TCP
only where the configuration says so), and agents that no network reaches.

The contract suite (test_provider_contract.py) runs on such an engine too, as `docker-tls`."""

from __future__ import annotations

import asyncio
import ssl
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from infrax.agent.client import AgentClient, AgentUnauthorized
from infrax.config import COMPONENTS, Config, ConfigError, ProviderConfig
from infrax.model import ContainerType
from infrax.provisioner.providers import ProviderError
from infrax.provisioner.providers.engine import Engine
from infrax.stack import Stack
from tests.containers.conftest import SECRET, MakeProvider
from tests.containers.tls_engine import Certificates, tls_options


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"url": "tcp://10.0.0.5:2375"}, "without TLS gives whoever reaches that port root on its host"),
        ({"url": "tcp://10.0.0.5:2376", "tls_ca": "/x/ca.pem"}, "missing tls_cert, tls_key"),
        ({"url": "unix:///run/docker.sock", "tls_cert": "/x/cert.pem"}, "tls_cert: only for a tcp:// engine"),
        ({"url": "http://10.0.0.5:2376"}, "must be unix:///path or tcp://host:port"),
        ({"url": "tcp://10.0.0.5"}, "must be unix:///path or tcp://host:port"),
    ],
)
def test_an_engine_that_cannot_be_reached_safely_is_refused_naming_why(options: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        Engine.from_options(options, "unix:///run/infrax-podman.sock")


def test_plain_tcp_is_taken_only_where_the_configuration_says_so(tmp_path: Path) -> None:
    assert Engine.from_options({"url": "tcp://10.0.0.5:2375", "insecure_tcp": True}, "").remote
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(ValueError, match=f"tls_ca: no such file {missing}"):
        Engine.from_options({"url": "tcp://h:2376", "tls_ca": missing, "tls_cert": missing, "tls_key": missing}, "")


async def test_infrax_refuses_to_start_with_a_plain_tcp_engine(tmp_path: Path) -> None:
    config = Config(
        data_dir=tmp_path / "data",
        ports={n: 0 for n in COMPONENTS},
        providers=[ProviderConfig("far", kind="docker", options={"url": "tcp://192.0.2.1:2375"})],
        container_types=[ContainerType(name="t", tags=["t"], providers=["far"])],
    )
    with pytest.raises(ConfigError, match=r"provider far: tcp://192\.0\.2\.1:2375 without TLS gives whoever"):
        await Stack(config).start()


async def test_a_client_without_a_certificate_of_the_engine_s_ca_reaches_nothing(
    make: MakeProvider, tls_engine: dict[str, str], tls_certificates: Certificates
) -> None:
    rogue = make("docker-tls", **tls_options(tls_certificates, tls_engine["url"], rogue=True))
    with pytest.raises(ProviderError, match="unreachable"):
        await rogue.list()
    # Nor does one that shows no certificate at all, or one that speaks plain HTTP to it.
    host, port = tls_engine["url"].removeprefix("tcp://").rsplit(":", 1)
    assert await _answer_without_a_certificate(host, int(port), tls_engine["tls_ca"]) == b""
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{host}:{port}/v1.41/containers/json", timeout=5)


async def _answer_without_a_certificate(host: str, port: int, ca: str) -> bytes:
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context(cafile=ca), server_hostname=host
        )
        writer.write(b"GET /v1.41/containers/json HTTP/1.1\r\nHost: docker\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(100), 10)  # TLS 1.3: refused after the handshake
    except (ssl.SSLError, ConnectionError):
        return b""


async def test_an_agent_on_a_remote_engine_has_no_port_and_keeps_no_secret_file(
    make: MakeProvider, docker_client: Any
) -> None:
    provider = make("docker-tls")
    container_id = f"remote-{uuid.uuid4().hex[:8]}"
    endpoint = await provider.create(container_id, ContainerType(name="t", tags=["t"]), SECRET)
    attrs = docker_client.api.inspect_container(f"infrax-{container_id}")
    assert attrs["HostConfig"]["NetworkMode"] == "none"
    assert not attrs["NetworkSettings"].get("Ports"), attrs["NetworkSettings"].get("Ports")
    assert not attrs.get("Mounts"), "no folder of this host is the container's"
    found = docker_client.containers.get(f"infrax-{container_id}").exec_run(["ls", "-A", "/run/infrax"])
    assert found.output.decode().split() == ["agent.sock"], found.output  # the secret file was read and removed
    # Its agent is reached only through the engine, from this host's relay address, with its secret.
    assert endpoint.host == "127.0.0.1"
    beat = await provider.heartbeat(endpoint, SECRET)
    assert beat["busy"] is False
    with pytest.raises(AgentUnauthorized):
        await AgentClient(endpoint.host, endpoint.port, "not-its-secret").heartbeat()
