"""Which repositories the job master may read: local paths under configured roots, URLs of
configured hosts. Checked before anything is cloned, fetched or read, so a push cannot make it read
a private repository of this host, nor fetch from its own loopback ports.
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_HOSTS = ("github.com", "gitlab.com", "bitbucket.org", "hg.mozilla.org")
_SCP = re.compile(r"^[\w.-]+@(?P<host>[\w.-]+):")


class RepositoryRefused(ValueError):
    """The policy does not allow this repository; the message says why and what to configure."""


@dataclass(frozen=True)
class RepositoryPolicy:
    # None: any local path (one user on one machine); else only paths under these folders.
    local_roots: tuple[Path, ...] | None = None
    hosts: tuple[str, ...] = DEFAULT_HOSTS  # `*.example.com` for every subdomain
    _resolved: tuple[Path, ...] = field(default=(), init=False, repr=False)

    def __post_init__(self) -> None:
        if self.local_roots is not None:
            object.__setattr__(self, "_resolved", tuple(Path(r).resolve() for r in self.local_roots))

    def check(self, location: str) -> None:
        """Refuse a repository outside the policy (RepositoryRefused); return quietly otherwise."""
        if location.startswith("file:"):
            raise RepositoryRefused(f"{location!r}: file:// URLs are refused; name the local path itself")
        scp = _SCP.match(location)
        if "://" in location or scp:
            host = scp.group("host") if scp else urllib.parse.urlsplit(location).hostname or ""
            self._check_host(location, host.lower())
            return
        self._check_path(location)

    def _check_host(self, location: str, host: str) -> None:
        if any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in self.hosts):
            return
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            address = None
        kind = "a loopback or private address" if address and (address.is_loopback or address.is_private) else ""
        raise RepositoryRefused(
            f"{location!r}: host {host!r} is not one the job master fetches from"
            f"{f' ({kind})' if kind else ''}; add it to repository_hosts"
        )

    def _check_path(self, location: str) -> None:
        if self.local_roots is None:
            return
        path = Path(location).resolve()  # symlinks followed: a link out of a root leads out of it
        if not any(path == root or root in path.parents for root in self._resolved):
            raise RepositoryRefused(
                f"{location!r} is not under allowed_repositories ({', '.join(map(str, self._resolved)) or 'none'})"
            )
