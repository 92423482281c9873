"""Configuration, read once (file, then environment, then command-line flags) and passed in."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from infrax.model import ContainerType

COMPONENTS = ("jobmaster", "optimizer", "scheduler", "provisioner", "executioner")
DEFAULT_PORTS = {"jobmaster": 7310, "optimizer": 7311, "scheduler": 7312, "provisioner": 7313, "executioner": 7314}


class ConfigError(Exception):
    """The configuration is wrong; the message says where."""


def default_container_types() -> list[ContainerType]:
    return [
        ContainerType(
            name="linux_x86_64",
            tags=["linux_x86_64", "linux"],
            providers=["process"],
            max_concurrent=max(2, os.cpu_count() or 2),
            min_warm=0,
            idle_timeout=60.0,
        )
    ]


@dataclass
class ProviderConfig:
    name: str
    kind: str = "process"
    capacity: int | None = None  # containers at once across types; None means no limit of its own
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    data_dir: Path = field(default_factory=lambda: Path(".infrax"))
    db: str = ""
    bus: str = "memory://"
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    urls: dict[str, str] = field(default_factory=dict)  # overrides, e.g. scheduler: http://ci-1:7312
    container_types: list[ContainerType] = field(default_factory=default_container_types)
    providers: list[ProviderConfig] = field(default_factory=lambda: [ProviderConfig("process")])
    executioners: list[str] = field(default_factory=list)  # URLs; default: the one executioner's URL
    name: str = ""  # this process's instance name, e.g. executioner-2; it must stay the same across restarts
    files_per_partition: int = 10  # when a task gives neither a partition count nor a target
    agent_kill_grace: float = 5.0
    in_flight_check_interval: float = 10.0
    dispatch_timeout: float = 120.0  # a dispatched run unknown to the executioner after this is lost
    # -- job master: code hosts and Treeherder (docs/code-hosts.md) --
    github_secrets: dict[str, str] = field(default_factory=dict)  # "owner/name" (or "*") -> webhook secret
    github_api_url: str = "https://api.github.com"  # where commit statuses are posted
    github_token: str | None = None  # sent as a bearer token with commit statuses
    url_rewrites: list[dict[str, str]] = field(default_factory=list)  # [{prefix, replacement}], like insteadOf
    mirror_dir: Path | None = None  # bare mirrors of fetched repositories; None: data_dir/mirrors
    hg_poll: list[str] = field(default_factory=list)  # Mercurial repositories (paths or URLs) polled for pushes
    hg_poll_interval: float = 30.0  # seconds between polls
    treeherder: bool = True  # publish Treeherder pulse job messages for every partition change
    treeherder_build_system: str = "infrax"  # their buildSystem

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.db:
            self.db = f"sqlite:///{self.data_dir / 'infrax.db'}"

    def url(self, component: str) -> str:
        return self.urls.get(component) or f"http://{self.host}:{self.ports[component]}"

    def executioner_urls(self) -> list[str]:
        return self.executioners or [self.url("executioner")]

    def container_type(self, name: str) -> ContainerType | None:
        return next((t for t in self.container_types if t.name == name), None)


def load_config(path: str | Path | None = None, **overrides: Any) -> Config:
    """File (INFRAX_CONFIG or `path`), then INFRAX_* variables, then non-None `overrides`."""
    values: dict[str, Any] = {}
    path = path or os.environ.get("INFRAX_CONFIG")
    if path:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ConfigError(f"cannot read config {path}: {error}") from error
        if not isinstance(values, dict):
            raise ConfigError(f"config {path} must be a mapping")
    for key in ("data_dir", "db", "bus", "host"):
        env = os.environ.get(f"INFRAX_{key.upper()}")
        if env:
            values[key] = env
    values.update({k: v for k, v in overrides.items() if v is not None})
    return _build(values)


def _build(values: dict[str, Any]) -> Config:
    known = set(Config.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    try:
        if "container_types" in values:
            values["container_types"] = [ContainerType.model_validate(t) for t in values["container_types"]]
        if "providers" in values:
            values["providers"] = [ProviderConfig(**p) for p in values["providers"]]
        if "ports" in values:
            values["ports"] = {**DEFAULT_PORTS, **values["ports"]}
    except (ValidationError, TypeError) as error:
        raise ConfigError(f"invalid config: {error}") from error
    return Config(**values)
