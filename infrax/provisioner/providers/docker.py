"""The `docker` provider: a container is an OCI container on a Docker Engine API (Docker or Podman).

Options (the provider's `options` in configuration):

    url            engine endpoint: unix:///run/infrax-podman.sock (default) or tcp://host:port, another
                   host's engine: with tls_ca, tls_cert and tls_key (its CA, a client certificate and
                   key), or insecure_tcp: true (engine.py). Its agents have no port: each connection
                   to one is a `docker exec` of a bridge to its socket file, carried on the engine's
                   connection, from a relay address of this host (relay_host, default 127.0.0.1)
    owner          per-installation id; containers are labelled infrax.owner=<owner>/<name> so that
                   two provisioners on one engine never take each other's containers for leaked ones.
                   Default: a hash of the `root` option (the stack passes <data_dir>/containers/<name>),
                   else the host name
    image          image when the container type names none; else the agent image, built on demand
    network_mode   "none" (default): no network, the agent listens on a socket file. "host": the
                   agent listens on a free port of publish_host, and bootstrapper URLs on 127.0.0.1
                   reach the host's services. Anything else (e.g. "bridge"): the agent's port 8000
                   is published on publish_host:<random port>. On a remote engine, whatever task
                   code may reach, the agent is on its socket file
    publish_host   address the agent is reachable on, on the engine's machine (default 127.0.0.1)
    endpoint_host  address the provisioner dials (default publish_host)
    extra_mounts   ["/host/path:/container/path:ro", "/same/path", ...] bind mounts, read-only unless ":rw"
    mount_agent    true: bind the host's infrax package read-only instead of using the image's copy
                   (for a custom image that has python3 >= 3.11 but not the agent)
    start_timeout  seconds from `create` until the agent must be ready (default 30)
    kill_grace     the agent's --kill-grace (default 5)
    pids_limit     optional cap on processes per container
    threads        worker threads for the (blocking) Docker SDK (default 8)

and the options of every provider kind (heartbeats, back-off after failed starts): see base.py.

The Docker SDK is synchronous; every call runs in this provider's own thread pool so a slow
engine never starves the event loop's default executor (which DNS look-ups also use).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import docker
import docker.errors
import requests

from infrax.background import BackgroundTasks
from infrax.model import ContainerType
from infrax.provisioner import image as agent_image
from infrax.provisioner.providers.base import ContainerProvider, Endpoint, ProviderError
from infrax.provisioner.providers.docker_settings import (
    AGENT_PORT,
    LABEL_ID,
    LABEL_OWNER,
    PACKAGE_DIR,
    SECRET_NAME,
    SOCKET_DIR,
    SOCKET_NAME,
    container_name,
    container_settings,
    default_endpoint_host,
    default_owner,
    parse_mount,
    write_secret,
)
from infrax.provisioner.providers.engine import BRIDGE, Engine, carry, secret_archive
from infrax.retry import retry

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_URL = "unix:///run/infrax-podman.sock"
READY = "INFRAX-AGENT-READY "
REMOVE_ATTEMPTS = 5  # tries of a forced removal that Podman refuses while the container is stopping
_DRIVER_ERRORS = (docker.errors.DockerException, requests.exceptions.RequestException)


class DockerProvider(ContainerProvider):
    kind = "docker"

    def __init__(self, name: str, capacity: int | None = None, options: dict[str, Any] | None = None) -> None:
        super().__init__(name, capacity, options)
        o = self.options
        self.engine = Engine.from_options(o, DEFAULT_URL)
        self.url = self.engine.url
        self.relay_host = str(o.get("relay_host", "127.0.0.1"))
        self._relays: dict[str, asyncio.Server] = {}
        self.owner = f"{o.get('owner') or default_owner(o.get('root'))}/{name}"
        self.image = o.get("image")
        # No network at all by default, where the engine is on this host: task code then reaches
        # nothing, not this host's loopback ports, not another container; the agent listens on a
        # socket file in a folder mounted for it. `host` or `bridge` (or a named network) for
        # tasks that need the network, at that cost (docs/security.md).
        self.network_mode = str(o.get("network_mode") or "none")
        self.socket_root = Path(o.get("socket_dir") or f"/tmp/infrax-agents-{os.getuid()}")  # short: 108 bytes
        self.publish_host = str(o.get("publish_host", "127.0.0.1"))
        self.endpoint_host = str(o.get("endpoint_host") or default_endpoint_host(self.publish_host))
        self.mounts = [parse_mount(m) for m in o.get("extra_mounts") or []]
        if o.get("mount_agent"):
            self.mounts.append(f"{PACKAGE_DIR}:/opt/infrax/infrax:ro")
        self.start_timeout = float(o.get("start_timeout", 30.0))
        self.kill_grace = float(o.get("kill_grace", 5.0))
        self.pids_limit = int(o["pids_limit"]) if o.get("pids_limit") else None
        self.threads = int(o.get("threads", 8))
        self._pool: ThreadPoolExecutor | None = None
        self._docker: docker.DockerClient | None = None
        self._image_lock = asyncio.Lock()
        self._built_image: str | None = None
        self._mine: set[str] = set()
        self._background = BackgroundTasks()
        # Seconds from `create` to a ready agent: the provisioner's start-time metric reads these.
        self.start_durations: collections.deque[float] = collections.deque(maxlen=256)
        self.last_start_duration: float | None = None

    # -- the interface -------------------------------------------------------------------------

    async def create(self, container_id: str, container_type: ContainerType, secret: str) -> Endpoint:
        image = await self._image_for(container_type)
        remote = self.engine.remote
        host_network = self.network_mode == "host" and not remote
        on_socket = self.network_mode == "none" or remote  # the agent listens on a socket file
        listen, port = (self.publish_host, 0) if host_network else ("0.0.0.0", AGENT_PORT)
        if on_socket:
            listen, port = f"unix:{SOCKET_DIR}/{SOCKET_NAME}", 0
        volumes = list(self.mounts)
        if not remote:
            # The container's own folder on this host (mode 0700): its secret until the agent has
            # read it, and the agent's socket file. A remote engine's host is not this one: the
            # secret is copied into the container before it starts (`_start`).
            own = self._socket_dir(container_id)
            own.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_secret(own / SECRET_NAME, secret)
            volumes.append(f"{own}:{SOCKET_DIR}:rw")
        settings = container_settings(self, container_id, container_type, image, volumes, listen, port)

        started = time.monotonic()
        starting = asyncio.ensure_future(
            self._call(f"start {container_id} from {image}", self._start, settings, secret if remote else None)
        )
        try:
            # Shielded: the SDK call runs on in its thread even if we are cancelled, and what it
            # creates then must be removed once it is there, not before.
            container = await asyncio.shield(starting)
        except asyncio.CancelledError:
            starting.add_done_callback(lambda done: self._remove_after(done, container_id))
            raise
        except docker.errors.NotFound as error:
            raise ProviderError(
                f"docker engine {self.url} has no image {image} (no registry is used: build it "
                f"with `infrax image build`): {error.explanation or error}"
            ) from error
        self._mine.add(container_id)
        try:
            socket_file = self._socket_dir(container_id) / SOCKET_NAME if on_socket and not remote else None
            endpoint = await asyncio.wait_for(
                self._ready(container, container_id, host_network, socket_file), self.start_timeout
            )
        except (TimeoutError, ProviderError) as error:
            why = str(error) or f"its agent was not ready within {self.start_timeout:g}s"
            logs = await self._logs_tail(container)
            await self.destroy(container_id)
            raise ProviderError(f"container {container_id} on {self.url} did not start: {why}{logs}") from error
        except BaseException:
            await asyncio.shield(self.destroy(container_id))
            raise
        self.last_start_duration = time.monotonic() - started
        self.start_durations.append(self.last_start_duration)
        log.info(
            "container %s ready at %s:%d after %.2fs",
            container_id,
            endpoint.host,
            endpoint.port,
            self.last_start_duration,
        )
        return endpoint

    async def alive(self, container_id: str) -> bool:
        try:
            attrs = await self._call(
                f"inspect container {container_id}",
                self._client.api.inspect_container,
                container_name(container_id),
                retries=2,
            )
        except docker.errors.NotFound:
            return False
        return bool(attrs.get("State", {}).get("Running"))

    def _socket_dir(self, container_id: str) -> Path:
        return self.socket_root / container_id

    async def destroy(self, container_id: str) -> None:
        self._mine.discard(container_id)
        relay = self._relays.pop(container_id, None)
        if relay is not None:
            relay.close()
        shutil.rmtree(self._socket_dir(container_id), ignore_errors=True)
        remove = functools.partial(
            self._call,
            f"remove container {container_id}",
            self._client.api.remove_container,
            container_name(container_id),
            v=True,
            force=True,
            retries=2,
        )
        try:
            # Podman refuses a forced removal of a container that stopped between its check and
            # its SIGKILL ("container state improper"); asked again, it removes it.
            await retry(remove, on=ProviderError, attempts=REMOVE_ATTEMPTS, when=lambda e: "state improper" in str(e))
        except docker.errors.NotFound:
            pass
        except ProviderError as error:
            # Docker answers 409 when a removal is already under way: the container is going.
            if "already in progress" not in str(error):
                raise

    async def list(self) -> list[str]:
        found = await self._call(
            "list containers",
            self._client.api.containers,
            all=True,
            filters={"label": f"{LABEL_OWNER}={self.owner}"},
            retries=2,
        )
        return sorted(c["Labels"][LABEL_ID] for c in found if (c.get("Labels") or {}).get(LABEL_ID))

    async def close(self) -> None:
        await self._background.wait()
        for relay in self._relays.values():
            relay.close()
        await asyncio.gather(*(self.destroy(c) for c in list(self._mine)), return_exceptions=True)
        # Closed, yet usable again: threads and connections come back on the next call.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        if self._docker is not None:
            self._docker.close()
            self._docker = None

    async def ensure_image(self) -> str:
        """The agent image, built now if the engine lacks it (about a minute the first time).

        `create` does this on first use; call it at start-up to keep that minute off the first partition.
        """
        if self.image:
            return str(self.image)
        async with self._image_lock:
            if self._built_image is None:
                try:
                    self._built_image = await self._call(
                        "build the agent image", agent_image.ensure_agent_image, self.url, self.engine.client
                    )
                except agent_image.ImageError as error:
                    raise ProviderError(f"no agent image on {self.url}: {error}") from error
        return self._built_image

    # -- helpers -------------------------------------------------------------------------------

    @property
    def _client(self) -> docker.DockerClient:
        if self._docker is None:
            # An explicit API version: constructing the client makes no request.
            self._docker = self.engine.client(timeout=60, max_pool_size=self.threads)
        return self._docker

    @property
    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"docker-{self.name}")
        return self._pool

    def _remove_after(self, start: asyncio.Future[Any], container_id: str) -> None:
        if not start.cancelled():
            start.exception()  # retrieved: a failed start is no news to anyone now
        self._background.spawn(self.destroy(container_id))

    async def _image_for(self, container_type: ContainerType) -> str:
        return str(container_type.image) if container_type.image else await self.ensure_image()

    def _start(self, settings: dict[str, Any], secret: str | None) -> Any:
        # create + start rather than run(): run() would try to pull a missing image from a registry.
        container = self._client.containers.create(**settings)
        try:
            if secret is not None:
                archive = secret_archive(SOCKET_DIR, SECRET_NAME, secret)
                if not container.put_archive(str(Path(SOCKET_DIR).parent), archive):
                    raise ProviderError(f"the engine refused the secret of container {settings['name']}")
            container.start()
        except _DRIVER_ERRORS:
            container.remove(force=True)
            raise
        return container

    async def _relay(self, container_id: str) -> Endpoint:
        """A listener of this host whose every connection is one to the agent, through the engine."""
        bridge = ["python3", "-S", "-c", BRIDGE, f"{SOCKET_DIR}/{SOCKET_NAME}"]

        async def connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                created = await self._call(
                    f"exec into container {container_id}",
                    self._client.api.exec_create,
                    container_name(container_id),
                    bridge,
                    stdin=True,
                    stderr=False,
                )
            except (ProviderError, docker.errors.NotFound) as error:
                log.warning("no connection to the agent of %s: %s", container_id, error)
                writer.close()
                return
            await carry(self.engine, created["Id"], reader, writer)

        relay = self._relays[container_id] = await asyncio.start_server(connected, self.relay_host, 0)
        return Endpoint(self.relay_host, relay.sockets[0].getsockname()[1])

    async def _ready(self, container: Any, container_id: str, host_network: bool, socket_file: Path | None) -> Endpoint:
        """Poll the container's stdout for the agent's READY line (cheap: it prints nothing else there)."""
        delay = 0.02
        while True:
            out = await self._call("read the agent's output", container.logs, stdout=True, stderr=False)
            for line in out.decode(errors="replace").splitlines():
                if line.startswith(READY):
                    info = json.loads(line[len(READY) :])
                    if self.engine.remote:  # through the engine, from a relay address of this host
                        return await self._relay(container_id)
                    if socket_file is not None:  # no network: its socket file, as this host sees it
                        return Endpoint(f"unix:{socket_file}", 0)
                    if host_network:
                        return Endpoint(self.endpoint_host, int(info["port"]))
                    return Endpoint(self.endpoint_host, await self._published_port(container))
            await self._call("inspect the starting container", container.reload)
            state = container.attrs.get("State", {})
            if not state.get("Running"):
                raise ProviderError(f"it exited with code {state.get('ExitCode')} before its agent was ready")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 0.1)

    async def _published_port(self, container: Any) -> int:
        await self._call("inspect the starting container", container.reload)
        bindings = (container.attrs.get("NetworkSettings", {}).get("Ports") or {}).get(f"{AGENT_PORT}/tcp") or []
        for binding in bindings:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
        raise ProviderError(f"the engine published no port for {AGENT_PORT}/tcp (bindings: {bindings})")

    async def _logs_tail(self, container: Any) -> str:
        try:
            text = (await self._call("read logs", container.logs, tail=20)).decode(errors="replace").strip()
        except (ProviderError, docker.errors.NotFound):
            return ""
        return f"; last output:\n{text}" if text else ""

    async def _call(self, what: str, function: Callable[..., T], *args: Any, retries: int = 0, **kwargs: Any) -> T:
        """Run a blocking SDK call in our threads; engine errors become ProviderError (NotFound passes)."""
        loop = asyncio.get_running_loop()
        for attempt in range(retries + 1):
            try:
                return await loop.run_in_executor(self._executor, functools.partial(function, *args, **kwargs))
            except docker.errors.NotFound:
                raise  # the caller decides whether a missing container or image is an error
            except requests.exceptions.ConnectionError as error:
                # Only a refused or broken connection is worth another try; answers are final.
                if attempt < retries:
                    await asyncio.sleep(0.2 * (attempt + 1))
                    continue
                raise ProviderError(f"docker engine {self.url} unreachable ({what}): {error}") from error
            except docker.errors.APIError as error:
                raise ProviderError(
                    f"docker engine {self.url} refused to {what}: {error.explanation or error}"
                ) from error
            except _DRIVER_ERRORS as error:
                raise ProviderError(f"docker engine {self.url} failed to {what}: {error}") from error
        raise AssertionError("unreachable")
