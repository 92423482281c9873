"""Container providers, by kind."""

from __future__ import annotations

from typing import Any

from infrax.provisioner.providers.base import ContainerProvider, Endpoint, ProviderError

__all__ = ["ContainerProvider", "Endpoint", "ProviderError", "make_provider"]


def make_provider(kind: str, name: str, capacity: int | None, options: dict[str, Any]) -> ContainerProvider:
    if kind == "process":
        from infrax.provisioner.providers.process import ProcessProvider

        return ProcessProvider(name, capacity, options)
    if kind == "docker":
        from infrax.provisioner.providers.docker import DockerProvider

        return DockerProvider(name, capacity, options)
    raise ValueError(f"unknown provider kind {kind!r} (known: process, docker)")
