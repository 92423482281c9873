"""Putting components together: all in one process (`infrax up`) or one per process.

In one process the components still talk only through their REST APIs and the bus: their
clients go through an in-process ASGI transport instead of a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from yarl import URL

from infrax.artifacts import FilesystemArtifacts
from infrax.auth import SERVICE_SCOPES, Guard, Security, TokenStore
from infrax.auth.admin import ensure_admin_token
from infrax.auth.runs import RunTokens
from infrax.bus import Bus, open_bus
from infrax.config import COMPONENTS, CORE_COMPONENTS, Config, ConfigError, ProviderConfig
from infrax.executioner.app import create_app as executioner_app
from infrax.executioner.artifacts import ArtifactKeeper
from infrax.executioner.client import ExecutionerClient, ExecutionerPool
from infrax.executioner.service import Executioner
from infrax.fleet.gateway import Gateway
from infrax.fleet.pool_provider import PoolProvider
from infrax.http import tcp_client
from infrax.jobmaster.app import create_app as jobmaster_app
from infrax.jobmaster.client import JobMasterClient
from infrax.jobmaster.plugin import load_logic
from infrax.jobmaster.service import JobMaster
from infrax.optimizer.app import create_app as optimizer_app
from infrax.optimizer.client import OptimizerClient
from infrax.private import check_private, private_dir, private_file
from infrax.provisioner.app import create_app as provisioner_app
from infrax.provisioner.client import ProvisionerClient
from infrax.provisioner.providers import ContainerProvider, ProviderError, make_provider
from infrax.provisioner.service import Provisioner
from infrax.scheduler.app import create_app as scheduler_app
from infrax.scheduler.client import SchedulerClient
from infrax.scheduler.fair_share import ProjectShare
from infrax.scheduler.service import Scheduler
from infrax.store import Database, StoreError, sqlite_path

log = logging.getLogger(__name__)
STOP_TIMEOUT = 20.0  # seconds each component has to stop


def secure_data_dir(config: Config) -> None:
    """The data directory and what infrax keeps in it are its user's alone (infrax.private): refused
    at start, naming the path, where an earlier start or a wide umask left one open to others."""
    private_dir(config.data_dir)
    for folder in (config.data_dir / "logs", config.artifact_dir, config.mirror_dir):
        if folder is not None:
            private_dir(folder)
    store = sqlite_path(config.db)
    if store is not None:
        private_dir(store.parent)
        private_file(store)  # SQLite gives its -wal and -shm files the mode of the store
        for companion in ("-wal", "-shm", "-journal"):
            check_private(store.with_name(store.name + companion))
    check_private(config.data_dir / "admin.token")


class _LateApp:
    """An ASGI app filled in after the clients that call it are made (components call each other)."""

    def __init__(self) -> None:
        self.app: FastAPI | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        assert self.app is not None, "component called before it was built"
        await self.app(scope, receive, send)


@dataclass
class Stack:
    """The running components of this process, their apps and the sockets they serve on."""

    config: Config
    components: tuple[str, ...] = COMPONENTS
    serve: bool = True
    logic: str = "reference"
    db: Database | None = None
    bus: Bus | None = None
    apps: dict[str, FastAPI] = field(default_factory=dict)
    services: dict[str, Any] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)
    _late: dict[str, _LateApp] = field(default_factory=dict)
    _sockets: dict[str, socket.socket] = field(default_factory=dict)
    _servers: list[uvicorn.Server] = field(default_factory=list)
    _serving: list[asyncio.Task[None]] = field(default_factory=list)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)
    tokens: TokenStore | None = None
    run_tokens: RunTokens | None = None
    security: Security | None = None
    admin_token: str | None = None  # minted by a stack with `admin_token_file`, kept in admin_token_path
    _service_token: tuple[str, str] | None = None  # (id, token) this process calls the others with
    gateway: Gateway | None = None  # the workers connected to this provisioner (infrax.fleet)

    def client(self, component: str, timeout: float = 60.0, *, token: str | None = None) -> httpx.AsyncClient:
        """An HTTP client for a component: in process when it runs here, over TCP otherwise. It sends
        `token`, else this process's own service token."""
        if component in self.components:
            late = self._late.setdefault(component, _LateApp())
            made = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=late), base_url=self.urls[component], timeout=timeout
            )
        else:
            made = tcp_client(self.config.url(component), timeout)
        self._authorize(made, token)
        self._clients.append(made)
        return made

    async def start(self, *, recover_in_flight: bool | None = None) -> None:
        config = self.config
        secure_data_dir(config)
        for name in self.components:
            if self.serve:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((config.host, config.ports[name]))
                self._sockets[name] = sock
                host, port = sock.getsockname()[:2]
                self.urls[name] = config.urls.get(name) or f"http://{host}:{port}"
            else:
                self.urls[name] = f"http://{name}.infrax.invalid"
        self.db = Database(config.db)
        await self.db.create_schema()
        await self._secure()
        self.bus = open_bus(config.bus, max_deliveries=config.bus_max_deliveries)
        await self.bus.start()
        # Everything restarting together means runs the executioner never heard of are lost for sure.
        recover = set(CORE_COMPONENTS) <= set(self.components) if recover_in_flight is None else recover_in_flight
        for name in self.components:
            self._build(name)
            self._late.setdefault(name, _LateApp()).app = self.apps[name]
        # Recovery may call other components, so every app answers before any service starts.
        for name in ("provisioner", "executioner", "optimizer", "scheduler", "jobmaster", "web"):
            service = self.services.get(name)
            if name == "scheduler" and service is not None:
                await service.start(recover_in_flight=recover)
            elif service is not None and hasattr(service, "start"):
                await service.start()
        if self.serve:
            for name in self.components:
                self._serve(name)

    async def _secure(self) -> None:
        """Tokens: the check every app makes, this process's own for calling the others, the admin's."""
        assert self.db is not None
        self.run_tokens = await RunTokens.load(self.db)
        self.tokens = TokenStore(self.db, self.run_tokens)
        scopes = sorted({s for name in self.components for s in SERVICE_SCOPES[name]})
        self._service_token = await self.tokens.create(
            f"service: {'+'.join(self.components)} (pid {os.getpid()} on {socket.gethostname()})"[:200], scopes
        )
        if self.config.admin_token_file:
            self.admin_token = await ensure_admin_token(self.tokens, self.admin_token_path)
        self.security = Security(Guard(self.tokens, public_read=self.config.public_read), self._allowed_hosts())

    @property
    def admin_token_path(self) -> Path:
        return self.config.data_dir / "admin.token"

    def _allowed_hosts(self) -> frozenset[str] | None:
        if "*" in self.config.allowed_hosts:
            return None
        names = {"127.0.0.1", "localhost", "::1", *self.config.allowed_hosts}
        public = [self.config.public_url] if self.config.public_url else []
        for url in [*self.urls.values(), *self.config.urls.values(), *self.config.executioners, *public]:
            host = URL(url).host
            if host:
                names.add(host)
        if self.config.host not in ("0.0.0.0", "::"):
            names.add(self.config.host)
        return frozenset(names)

    def _build(self, name: str) -> None:
        config, db, bus = self.config, self.db, self.bus
        assert db is not None and bus is not None and self.security is not None
        if name == "executioner":
            service: Any = Executioner(
                db,
                bus,
                ProvisionerClient(self.client("provisioner")),
                config.data_dir / "logs",
                config.public_url or self.urls["executioner"],
                name=config.name or "executioner",
                run_tokens=self.run_tokens,
                jobmaster_url=self.urls.get("jobmaster") or config.url("jobmaster"),
                installation_url=config.public_url,
                jobmaster=self.client("jobmaster", timeout=30.0),
                project_secrets=config.project_secrets,
                outage_deadline=config.outage_deadline,
                artifacts=ArtifactKeeper(
                    FilesystemArtifacts(config.artifact_dir or config.data_dir / "artifacts"),
                    expiry=timedelta(days=config.artifact_expiry_days),
                    max_run_bytes=config.artifact_max_run_bytes,
                    log_dir=config.data_dir / "logs",
                ),
            )
            app = executioner_app(service, self.security)
        elif name == "provisioner":
            self.gateway = Gateway(self.security.guard.tokens, grace=config.worker_grace, relay_host=config.relay_host)
            providers = [self._provider(p) for p in config.providers]
            service = Provisioner(
                config.container_types,
                providers,
                self._executioners(),
                bus,
                run_tokens=self.run_tokens,
                outage_deadline=config.outage_deadline,
            )
            pools = [p.name for p in providers if isinstance(p, PoolProvider)]
            gateway = self.gateway

            def capacity_changed() -> None:
                for pool in pools:
                    service.capacity_grew(pool)

            gateway.on_change = capacity_changed
            app = provisioner_app(service, self.security, self.gateway)
        elif name == "optimizer":
            from infrax.optimizer.service import OptimizerService

            service = OptimizerService(db, bus, files_per_partition=config.files_per_partition)
            app = optimizer_app(service, self.security)
        elif name == "scheduler":
            service = Scheduler(
                db,
                bus,
                OptimizerClient(self.client("optimizer")),
                ProvisionerClient(self.client("provisioner")),
                self._executioners(),
                dispatch_timeout=config.dispatch_timeout,
                in_flight_check_interval=config.in_flight_check_interval,
                run_tokens=self.run_tokens,
                rerun_failures=config.rerun_failures,
                intermittent_fails=config.intermittent_fails,
                projects={
                    name: ProjectShare(p.weight, dict(p.max_containers), p.max_priority)
                    for name, p in config.projects.items()
                },
            )
            app = scheduler_app(service, self.security)
        elif name == "jobmaster":
            from infrax.jobmaster.settings import JobMasterSettings

            service = JobMaster(
                db,
                bus,
                SchedulerClient(self.client("scheduler")),
                load_logic(self.logic),
                config.public_url or self.urls["jobmaster"],
                settings=JobMasterSettings.from_config(config),
                executioners=self._executioners(),
            )
            # Behind one public URL, the dashboard's pages are its `/jobs/…` and `/partitions/…`.
            service.dashboard_url = config.urls.get("web") or config.public_url or self.urls.get("web") or None
            app = jobmaster_app(service, self.security)
        elif name == "web":
            from infrax.web.app import Dashboard
            from infrax.web.app import create_app as web_app
            from infrax.web.views import Views

            views = Views(
                JobMasterClient(self._as_viewer("jobmaster")),
                SchedulerClient(self._as_viewer("scheduler")),
                ExecutionerClient(self._as_viewer("executioner")),
                ProvisionerClient(self._as_viewer("provisioner")),
            )
            service = Dashboard(views, bus)
            app = web_app(service, self.security.allowed_hosts)
        else:
            raise ValueError(f"unknown component {name!r}")
        self.services[name] = service
        self.apps[name] = app

    def _provider(self, provider: ProviderConfig) -> ContainerProvider:
        options = {
            "root": str(self.config.containers_root / provider.name),
            "kill_grace": self.config.agent_kill_grace,
            **provider.options,
        }
        try:
            if provider.kind == "pool":
                assert self.gateway is not None
                return PoolProvider(provider.name, provider.capacity, provider.options, self.gateway)
            return make_provider(provider.kind, provider.name, provider.capacity, options)
        except (ProviderError, ValueError) as error:  # a setting that can never work: refuse to start
            raise ConfigError(f"provider {provider.name}: {error}") from error

    def _as_viewer(self, component: str) -> httpx.AsyncClient:
        """A client that carries no token of its own: the dashboard sends each viewer's."""
        made = self.client(component)
        made.headers.pop("Authorization", None)
        return made

    def _executioners(self) -> ExecutionerPool:
        if "executioner" in self.components or not self.config.executioners:
            return ExecutionerPool([ExecutionerClient(self.client("executioner"))])
        clients = []
        for url in self.config.executioners:
            made = tcp_client(url)
            self._authorize(made, None)
            self._clients.append(made)
            clients.append(ExecutionerClient(made))
        return ExecutionerPool(clients)

    def _authorize(self, client: httpx.AsyncClient, token: str | None) -> None:
        """`token`, else this process's own service token, on every request of `client`."""
        token = token or (self._service_token[1] if self._service_token is not None else None)
        if token:
            client.headers["Authorization"] = f"Bearer {token}"

    def _serve(self, name: str) -> None:
        requests = self.config.log_requests
        server = _EmbeddedServer(
            uvicorn.Config(
                self.apps[name], log_level="info" if requests else "warning", access_log=requests, lifespan="off"
            )
        )
        self._servers.append(server)
        self._serving.append(asyncio.create_task(server.serve(sockets=[self._sockets[name]]), name=f"serve-{name}"))

    async def stop(self) -> None:
        for server in self._servers:
            server.should_exit = True
        await asyncio.gather(*self._serving, return_exceptions=True)
        for name in ("web", "jobmaster", "scheduler", "optimizer", "provisioner", "executioner"):
            service = self.services.get(name)
            if service is not None:
                await _stop_within(name, service.stop(), STOP_TIMEOUT)
        for client in self._clients:
            await client.aclose()
        if self.tokens is not None and self._service_token is not None:
            try:
                await self.tokens.revoke(self._service_token[0])
            except StoreError as error:
                log.warning("could not revoke this process's service token: %s", error)
        if self.bus:
            await self.bus.close()
        if self.db:
            await self.db.close()
        for sock in self._sockets.values():
            sock.close()


async def _stop_within(name: str, stopping: Any, timeout: float) -> None:
    """Stop one component, giving up after `timeout`: a component that hangs must not keep the
    others (and their containers) from stopping. `asyncio.wait`, not `wait_for`, which would wait
    again for the cancelled stop to end."""
    task = asyncio.ensure_future(stopping)
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        log.error("stopping %s took more than %g s; going on without it", name, timeout)
        task.cancel()
    elif not task.cancelled() and task.exception() is not None:
        log.error("stopping %s failed", name, exc_info=task.exception())


class _EmbeddedServer(uvicorn.Server):
    """One of several servers in this process: signals stay the process's own (`infrax up` stops the
    whole stack on SIGTERM), instead of each server taking them over while it serves."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
