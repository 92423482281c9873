"""Whose runs a container may take: one project at one trust level, for as long as it lives.

A run can write everything its container keeps: the source caches (`<workdir>/cache/`), the
workspace, files left in `/tmp`, processes left behind. So a container, once it ran a partition,
is bound to that partition's tenant, its project and its trust (a trusted push's or a pull
request's), and takes no run of another tenant again: a pull request never lands on a container
that a trusted build will use later, and project A never on one that keeps B's caches. A fresh
container (a warm one nobody used) takes anybody's first run. A container adopted from a
provisioner before this one has an unknown past and takes no new run.

With a container type's `isolation: run` a container takes one run and is replaced.
"""

from __future__ import annotations

from typing import Final

from infrax.model import PartitionOffer

UNKNOWN: Final = "?"  # an adopted container's: it matches no run's tenant


def tenant_of(offer: PartitionOffer) -> str:
    return f"{offer.project}/{'trusted' if offer.trusted else 'untrusted'}"


def may_take(container_tenant: str | None, run_tenant: str) -> bool:
    """Whether a container bound to `container_tenant` (None: never used) may run a `run_tenant` run."""
    return container_tenant is None or container_tenant == run_tenant
