"""What a `docker` provider's container is made of: its command, labels, mounts, network and limits."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infrax.model import ContainerType

if TYPE_CHECKING:
    from infrax.provisioner.providers.docker import DockerProvider

AGENT_PORT = 8000
WORKDIR = "/work"
SOCKET_DIR = "/run/infrax"  # in the container: its own folder (mounted from this host, if the engine is here)
SOCKET_NAME = "agent.sock"  # without a network, or on a remote engine, where the agent listens
SECRET_NAME = "agent-secret"  # read, then removed, by the agent
LABEL_OWNER = "infrax.owner"
LABEL_ID = "infrax.container-id"
LABEL_TYPE = "infrax.type"
PACKAGE_DIR = Path(__file__).resolve().parents[2]  # .../infrax


def container_settings(
    provider: DockerProvider,
    container_id: str,
    container_type: ContainerType,
    image: str,
    volumes: list[str],
    listen: str,
    port: int,
) -> dict[str, Any]:
    """The Docker SDK's `containers.create` arguments."""
    host_network = provider.network_mode == "host" and not provider.engine.remote
    remote = provider.engine.remote
    settings: dict[str, Any] = {
        "image": image,
        "command": [
            "python3",
            "-m",
            "infrax.agent",
            "--host",
            listen,
            "--port",
            str(port),
            "--workdir",
            WORKDIR,
            "--kill-grace",
            str(provider.kill_grace),
            "--secret-file",
            f"{SOCKET_DIR}/{SECRET_NAME}",
        ],
        "name": container_name(container_id),
        "detach": True,
        # PID 1 must forward SIGTERM and reap orphans; a Python PID 1 ignores SIGTERM.
        "init": True,
        # Not the secret: an environment stays readable in /proc and `docker inspect`. It goes in
        # as a file of the container's own folder, which the agent removes once read.
        "environment": {"PYTHONPATH": "/opt/infrax"},
        "labels": {
            LABEL_OWNER: provider.owner,
            LABEL_ID: container_id,
            LABEL_TYPE: container_type.name,
            "infrax.provider": provider.name,
        },
        "volumes": volumes,
    }
    if host_network or provider.network_mode == "none":
        settings["network_mode"] = provider.network_mode
    elif remote:  # a network for task code, but the agent's port is published nowhere
        settings["network"] = provider.network_mode
    else:
        settings["ports"] = {f"{AGENT_PORT}/tcp": (provider.publish_host, None)}
        if provider.network_mode != "bridge":
            settings["network"] = provider.network_mode
    if container_type.memory:
        # No swap either, so the limit is the limit.
        settings["mem_limit"] = settings["memswap_limit"] = container_type.memory
    if container_type.cpus:
        settings["nano_cpus"] = int(container_type.cpus * 1e9)
    if provider.pids_limit:
        settings["pids_limit"] = provider.pids_limit
    return settings


def container_name(container_id: str) -> str:
    return f"infrax-{container_id}"


def default_owner(root: str | None) -> str:
    if root:
        return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return socket.gethostname()


def default_endpoint_host(publish_host: str) -> str:
    return publish_host if publish_host not in ("", "0.0.0.0", "::") else "127.0.0.1"


def parse_mount(spec: str) -> str:
    """`host:container[:ro|rw]` or a lone path (mounted at the same place); read-only by default."""
    parts = str(spec).split(":")
    if len(parts) == 1:
        parts = [parts[0], parts[0], "ro"]
    elif len(parts) == 2:
        parts.append("ro")
    host, target, mode = parts if len(parts) == 3 else ("", "", "")
    if not host.startswith("/") or not target.startswith("/") or mode not in ("ro", "rw"):
        raise ValueError(f"extra_mounts entry {spec!r} must be /host/path[:/container/path[:ro|rw]]")
    return f"{host}:{target}:{mode}"


def write_secret(path: Path, secret: str) -> None:
    """Only root may read it, and only until the agent removed it."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o400)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)
