"""Configuration, read once (file, then environment, then command-line flags) and passed in."""

from __future__ import annotations

import os
from dataclasses import field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass

from infrax.model import ContainerType

# The five that do the work, and the dashboard that shows it.
CORE_COMPONENTS = ("jobmaster", "optimizer", "scheduler", "provisioner", "executioner")
COMPONENTS = (*CORE_COMPONENTS, "web")
DEFAULT_PORTS = {
    "jobmaster": 7310,
    "optimizer": 7311,
    "scheduler": 7312,
    "provisioner": 7313,
    "executioner": 7314,
    "web": 7315,
}


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


_STRICT = ConfigDict(extra="forbid")


@dataclass(config=_STRICT)
class ProviderConfig:
    name: str
    kind: str = "process"
    capacity: int | None = None  # containers at once across types; None means no limit of its own
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(config=_STRICT)
class ProjectConfig:
    """An operator's settings for one project that shares this infrax with others (docs/scheduling.md)."""

    weight: float = 1.0  # its share of each container type while others also have work queued
    # container type (or "*": each type) -> containers of it the project's runs may hold at once
    max_containers: dict[str, int] = field(default_factory=dict)
    max_priority: int | None = None  # a task's priority above this counts as this

    def __post_init__(self) -> None:
        if not self.weight > 0:
            raise ValueError(f"a project's weight must be above 0, not {self.weight}")
        if any(n < 0 for n in self.max_containers.values()):
            raise ValueError("max_containers: a limit cannot be negative")


@dataclass(config=_STRICT)
class Config:
    """Every setting, typed: a value of the wrong type is refused when the configuration is read.

    A secret (`db`, `bus`, `github_token`, `token`, each of `github_secrets` and `project_secrets`) may be given as
    `{env: NAME}` or `{file: PATH}` instead of in the file itself."""

    data_dir: Path = field(default_factory=lambda: Path(".infrax"))
    db: str = ""
    bus: str = "memory://"
    host: str = "127.0.0.1"
    ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PORTS))
    urls: dict[str, str] = field(default_factory=dict)  # overrides, e.g. scheduler: http://ci-1:7312
    # The one base URL every URL infrax hands out starts with (logs, jobs, Treeherder's tc_root_url),
    # behind a proxy that routes by path (docs/code-hosts.md); None: each component's own URL.
    public_url: str | None = None
    container_types: list[ContainerType] = field(default_factory=default_container_types)
    providers: list[ProviderConfig] = field(default_factory=lambda: [ProviderConfig("process")])
    executioners: list[str] = field(default_factory=list)  # URLs; default: the one executioner's URL
    name: str = ""  # this process's instance name, e.g. executioner-2; it must stay the same across restarts
    # A task that gives no count nor target: this many files a partition (None: `partitions: auto`).
    files_per_partition: int | None = 10
    agent_kill_grace: float = 5.0
    # Where containers keep their folders (the `process` provider's run directories), beside the
    # data directory rather than in it: the data directory is infrax's alone (0700), while a task
    # user must reach its own container's folder. None: <data_dir>-containers
    containers_dir: Path | None = None
    # -- artifacts (README, docs/rest-api.md) --
    artifact_dir: Path | None = None  # the filesystem artifact store; None: data_dir/artifacts
    artifact_expiry_days: float = 30.0  # a run's artifacts and log are kept this long
    artifact_max_run_bytes: int = 10 * 1024**3  # what one run may keep, all its artifacts together
    in_flight_check_interval: float = 10.0
    dispatch_timeout: float = 120.0  # a dispatched run unknown to the executioner after this is lost
    # -- failures of tests (a task's rerunFailures / intermittent, or .infrax.yml's, say otherwise) --
    rerun_failures: int = 2  # a failed partition's failing tests run again this often, on other containers
    intermittent_fails: bool = False  # a failure that passed when run again fails its task
    # -- failures (docs/architecture.md, "Nothing accepted is lost") --
    bus_max_deliveries: int = 8  # a message whose handler keeps failing, then dead-lettered with the error
    github_status_deadline: float = 6 * 3600.0  # seconds a commit status is retried before it is dropped
    github_status_backoff: float = 1.0  # seconds before its first retry; doubled each time, up to 5 min
    # seconds another component may stay unreachable or answer 5xx before a run it holds up is
    # given up as an infrastructure failure (re-run); until then it is waited for, never a retry spent
    outage_deadline: float = 600.0
    # Workers (`infrax worker`, providers of kind `pool`): how long a worker may be away before its
    # containers are given up (their runs re-run), and where the provisioner listens for the
    # executioner's connections to remote agents (one port a container; an address the executioners reach).
    worker_grace: float = 10.0
    relay_host: str = "127.0.0.1"
    # -- job master: code hosts and Treeherder (docs/code-hosts.md) --
    github_secrets: dict[str, str] = field(default_factory=dict)  # "owner/name" (or "*") -> webhook secret
    github_api_url: str = "https://api.github.com"  # where commit statuses are posted
    github_token: str | None = None  # sent as a bearer token with commit statuses
    url_rewrites: list[dict[str, str]] = field(default_factory=list)  # [{prefix, replacement}], like insteadOf
    mirror_dir: Path | None = None  # bare mirrors of fetched repositories; None: data_dir/mirrors
    hg_poll: list[str] = field(default_factory=list)  # Mercurial repositories (paths or URLs) polled for pushes
    hg_poll_interval: float = 30.0  # seconds between polls
    treeherder: bool = True  # publish Treeherder pulse job messages for every partition change
    log_requests: bool = False  # a log line for every HTTP request served and made (`--log-requests`)
    treeherder_build_system: str = "infrax"  # their buildSystem
    # -- security (docs/security.md) --
    # Host names answered besides loopback and the configured URLs' ("*": any, behind a proxy that checks)
    allowed_hosts: list[str] = field(default_factory=list)
    public_read: bool = False  # read-only GETs without a token (a public dashboard, Treeherder's log fetches)
    admin_token_file: bool = True  # `infrax up` keeps an admin token in data_dir/admin.token (mode 0600)
    token: str | None = None  # what the CLI sends; else INFRAX_TOKEN, else data_dir/admin.token
    # Local repositories only under these folders (None: any path, for one user on one machine), and
    # clone URLs only of these hosts (`*.example.com` for subdomains; loopback only when listed).
    allowed_repositories: list[str] | None = None
    repository_hosts: list[str] = field(
        default_factory=lambda: ["github.com", "gitlab.com", "bitbucket.org", "hg.mozilla.org"]
    )
    # project -> {NAME: value}: in the environment of every run of a trusted push, and never in its log
    project_secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    # -- many projects on one infrax (docs/scheduling.md): project -> weight, limits --
    projects: dict[str, ProjectConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir)
        if not self.db:
            self.db = f"sqlite:///{self.data_dir / 'infrax.db'}"

    @property
    def containers_root(self) -> Path:
        return Path(self.containers_dir or f"{self.data_dir}-containers")

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


SECRETS = ("db", "bus", "github_token", "token")


def _build(values: dict[str, Any]) -> Config:
    known = set(Config.__dataclass_fields__)
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
    for key in SECRETS:
        if key in values:
            values[key] = _secret(key, values[key])
    if isinstance(values.get("project_secrets"), dict):
        values["project_secrets"] = {
            project: {name: _secret(f"project_secrets.{project}.{name}", value) for name, value in names.items()}
            if isinstance(names, dict)
            else names
            for project, names in values["project_secrets"].items()
        }
    if isinstance(values.get("github_secrets"), dict):
        values["github_secrets"] = {k: _secret(f"github_secrets.{k}", v) for k, v in values["github_secrets"].items()}
    try:
        if "container_types" in values:
            values["container_types"] = [ContainerType.model_validate(t) for t in values["container_types"]]
        if isinstance(values.get("projects"), dict):
            values["projects"] = {
                name: ProjectConfig(**(settings or {})) if isinstance(settings, dict) else settings
                for name, settings in values["projects"].items()
            }
        if "providers" in values:
            values["providers"] = [ProviderConfig(**p) for p in values["providers"]]
        if "ports" in values:
            values["ports"] = {**DEFAULT_PORTS, **values["ports"]}
        return Config(**values)
    except (ValidationError, TypeError, ValueError) as error:
        raise ConfigError(f"invalid config: {_problems(error)}") from error


def _secret(key: str, value: Any) -> Any:
    """A value, or what `{env: NAME}` or `{file: PATH}` points at."""
    if not isinstance(value, dict):
        return value
    if set(value) == {"env"}:
        if value["env"] not in os.environ:
            raise ConfigError(f"config {key}: environment variable {value['env']} is not set")
        return os.environ[value["env"]]
    if set(value) == {"file"}:
        try:
            return Path(value["file"]).read_text().strip()
        except OSError as error:
            raise ConfigError(f"config {key}: cannot read {value['file']}: {error}") from error
    raise ConfigError(f"config {key}: give a value, {{env: NAME}} or {{file: PATH}}")


def _problems(error: Exception) -> str:
    if not isinstance(error, ValidationError):
        return str(error)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in error.errors())
