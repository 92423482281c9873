"""The job master's part of the configuration, read once from `Config` and passed in."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infrax.jobmaster.mirrors import UrlRewrite
from infrax.jobmaster.policy import RepositoryPolicy


@dataclass(frozen=True)
class JobMasterSettings:
    data_dir: Path = Path(".infrax")
    github_secrets: dict[str, str] = field(default_factory=dict)  # "owner/name" or "*" -> secret
    github_api_url: str = "https://api.github.com"
    github_token: str | None = None
    url_rewrites: list[UrlRewrite] = field(default_factory=list)
    mirror_dir: Path | None = None
    hg_poll: list[str] = field(default_factory=list)
    hg_poll_interval: float = 30.0
    # How often unfinished jobs are checked against the scheduler, for news the bus never brought.
    reconcile_interval: float = 30.0
    treeherder: bool = True
    treeherder_build_system: str = "infrax"
    repositories: RepositoryPolicy = field(default_factory=RepositoryPolicy)
    github_status_deadline: float = 6 * 3600.0  # a commit status GitHub refuses is retried this long
    github_status_backoff: float = 1.0  # seconds before its first retry, doubled each time up to 5 min

    @property
    def mirrors(self) -> Path:
        return self.mirror_dir or self.data_dir / "mirrors"

    @classmethod
    def from_config(cls, config: Any) -> JobMasterSettings:
        rewrites = []
        for i, rule in enumerate(config.url_rewrites):
            if (
                not isinstance(rule, dict)
                or not isinstance(rule.get("prefix"), str)
                or not isinstance(rule.get("replacement"), str)
                or not rule["prefix"]
            ):
                raise ValueError(f"url_rewrites[{i}] must be a mapping with a non-empty 'prefix' and a 'replacement'")
            rewrites.append(UrlRewrite(rule["prefix"], rule["replacement"]))
        return cls(
            data_dir=Path(config.data_dir),
            github_secrets=dict(config.github_secrets),
            github_api_url=config.github_api_url,
            github_token=config.github_token,
            url_rewrites=rewrites,
            mirror_dir=Path(config.mirror_dir) if config.mirror_dir else None,
            hg_poll=list(config.hg_poll),
            hg_poll_interval=config.hg_poll_interval,
            treeherder=config.treeherder,
            treeherder_build_system=config.treeherder_build_system,
            github_status_deadline=config.github_status_deadline,
            github_status_backoff=config.github_status_backoff,
            repositories=RepositoryPolicy(
                None if config.allowed_repositories is None else tuple(map(Path, config.allowed_repositories)),
                tuple(config.repository_hosts),
            ),
        )
