"""Container figures: start to agent ready per provider, and dispatch latency on a warm pool.

    .venv/bin/python benchmarks/containers.py [--starts 10] [--requests 30] [--warm 3] [--providers process,docker]

1. Start → agent ready: `--starts` containers created one after another on each provider (the
   provider's own clock, from `create` to the agent's READY line), each removed after; median,
   95th percentile, min and max, and the median removal time.
2. Dispatch latency through the whole stack (in one process, SQLite, in-process bus) on a warm
   pool of `--warm` containers per provider (min_warm = max_concurrent = warm): `--requests`
   single-partition task requests submitted one at a time, paced (every 0.25 s) below capacity,
   each partition a trivial `exit 0`. Latency is the partition's queued_at → started_at as the
   scheduler recorded them (queued when planned; started when the agent said so), and, for the
   whole path, submit → started. For comparison the same without a warm pool: min_warm 0 and
   max_partitions 1, so every partition waits for a fresh container.

3. What isolation costs in container starts (docs/security.md): the same paced requests taking
   turns among 4 tenants (2 projects × a trusted push and a pull request) against one tenant,
   with `isolation: tenant` (a container per project and trust, reused) and `isolation: run` (a
   container per run), at two container limits: below and above the number of tenants.

`docker` needs a Docker Engine API: INFRAX_DOCKER_URL, or Podman's on unix:///run/infrax-podman.sock
(`sudo scripts/setup-podman.sh`); without one that provider is skipped with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infrax.config import COMPONENTS, Config, ProviderConfig
from infrax.model import ContainerState, ContainerType, TaskDefinition, TaskRequestSubmission, is_final
from infrax.provisioner.providers import ContainerProvider, ProviderError, make_provider
from infrax.scheduler.client import SchedulerClient
from infrax.stack import Stack

DOCKER_URL = os.environ.get("INFRAX_DOCKER_URL", "unix:///run/infrax-podman.sock")
TYPE = ContainerType(name="bench", tags=["bench"], memory="256m", cpus=1)
PACE = 0.25


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[int(q) - 1]


def figures(values: list[float]) -> str:
    return (
        f"median {statistics.median(values):.3f}s  p95 {percentile(values, 95):.3f}s  "
        f"min {min(values):.3f}s  max {max(values):.3f}s  (n={len(values)})"
    )


def provider_options(kind: str, root: Path, owner: str, mounts: list[str]) -> dict[str, Any]:
    if kind == "docker":
        from infrax.provisioner.image import ensure_agent_image

        return {
            "url": DOCKER_URL,
            "image": ensure_agent_image(DOCKER_URL),
            "owner": owner,
            "extra_mounts": mounts,
            "kill_grace": 0.5,
        }
    return {"root": str(root / "containers" / kind), "kill_grace": 0.5}


def engine_problem() -> str | None:
    import docker

    try:
        client = docker.DockerClient(base_url=DOCKER_URL, version="1.41", timeout=5)
        client.ping()
        client.close()
    except Exception as error:  # noqa: BLE001 - any failure means: no engine to measure
        return f"no Docker Engine API at {DOCKER_URL} ({error.__class__.__name__}); run sudo scripts/setup-podman.sh"
    return None


async def measure_starts(kind: str, count: int, root: Path, owner: str) -> None:
    provider: ContainerProvider = make_provider(kind, f"bench-{kind}", None, provider_options(kind, root, owner, []))
    removals: list[float] = []
    try:
        for n in range(count):
            container_id = f"bench-{uuid.uuid4().hex[:10]}"
            await provider.create(container_id, TYPE, f"secret-{n}-0123456789abcdef")
            started = time.monotonic()
            await provider.destroy(container_id)
            removals.append(time.monotonic() - started)
    finally:
        for leftover in await provider.list():
            await provider.destroy(leftover)
        await provider.close()
    starts = list(provider.start_durations)
    print(f"  {kind:8} start → agent ready: {figures(starts)};  removal median {statistics.median(removals):.3f}s")


ONE_TENANT = [("bench", True)]
FOUR_TENANTS = [("a", True), ("a", False), ("b", True), ("b", False)]


async def measure_dispatch(
    kind: str,
    requests: int,
    warm: int,
    root: Path,
    owner: str,
    cold: bool = False,
    tenants: list[tuple[str, bool]] = ONE_TENANT,
    isolation: str = "tenant",
    label: str | None = None,
    warm_pool: bool = True,
) -> None:
    """`tenants`: the (project, trusted) the requests take turns at; `isolation`: the type's;
    `warm_pool` False: no container is started before the first request (they are still reused)."""
    min_warm = warm if warm_pool and not cold else 0
    name = f"{kind}-{'cold' if cold else 'warm'}-{len(tenants)}-{isolation}-{warm}-{uuid.uuid4().hex[:6]}"
    scripts = root / f"scripts-{name}"
    scripts.mkdir(parents=True, exist_ok=True)
    scripts.chmod(0o755)  # the task users run it
    trivial = scripts / "trivial.sh"
    trivial.write_text("#!/bin/sh\nexit 0\n")
    trivial.chmod(0o755)
    pool = TYPE.model_copy(
        update={
            "providers": [kind],
            "min_warm": min_warm,
            "max_concurrent": warm,
            "idle_timeout": 3600,
            "max_partitions": 1 if cold else None,
            "isolation": isolation,
        }
    )
    config = Config(
        data_dir=root / f"data-{name}",
        ports={n: 0 for n in COMPONENTS},
        container_types=[pool],
        providers=[ProviderConfig(kind, kind=kind, options=provider_options(kind, root, owner, [str(scripts)]))],
        agent_kill_grace=0.5,
    )
    stack = Stack(config, serve=False)
    await stack.start()
    try:
        provisioner = stack.services["provisioner"]
        deadline = time.monotonic() + 120
        while min_warm and sum(s.state == ContainerState.IDLE for s in provisioner.slots.values()) < warm:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the warm pool of {warm} {kind} containers never filled")
            await asyncio.sleep(0.05)
        scheduler = SchedulerClient(stack.client("scheduler"))
        definition = TaskDefinition(
            name="trivial", files=["a"], container_tag=["bench"], bootstrapper=str(trivial), partitions=1
        )
        submitted: dict[str, datetime] = {}
        for n in range(requests):
            project, trusted = tenants[n % len(tenants)]
            before = datetime.now().astimezone()
            request = await scheduler.submit(
                TaskRequestSubmission(project=project, trusted=trusted, tasks=[definition])
            )
            submitted[request.id] = before
            await asyncio.sleep(PACE)
        dispatch, whole = [], []
        for request_id, at in submitted.items():
            while not is_final((await scheduler.get_request(request_id)).state):
                await asyncio.sleep(0.05)
            (partition,) = await scheduler.partitions(request_id)
            if partition.state != "completed" or not partition.started_at or not partition.queued_at:
                raise RuntimeError(f"partition {partition.id} ended {partition.state}: {partition.message}")
            dispatch.append((partition.started_at - partition.queued_at).total_seconds())
            whole.append((partition.started_at - at).total_seconds())
        started_containers = len(stack.services["provisioner"].providers[kind].start_durations)
    finally:
        await stack.stop()
    label = label or (f"{kind} cold" if cold else kind)
    print(f"  {label:12} queued → running:  {figures(dispatch)}")
    print(f"  {label:12} submit → running:  {figures(whole)}  ({started_containers} containers started in all)")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--warm", type=int, default=3)
    parser.add_argument("--providers", default="process,docker")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.providers.split(",") if k.strip()]
    problem = engine_problem() if "docker" in kinds else None
    if problem:
        print(f"docker: skipped: {problem}")
        kinds.remove("docker")
    owner = f"bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="infrax-bench-containers-") as tmp:
        root = Path(tmp)
        root.chmod(0o711)  # task users pass through to their containers' folders and the bootstrapper
        print(f"Container start → agent ready, {args.starts} sequential starts per provider:")
        for kind in kinds:
            try:
                await measure_starts(kind, args.starts, root, owner)
            except ProviderError as error:
                print(f"  {kind}: failed: {error}")
        print(
            f"Dispatch latency on a warm pool of {args.warm} containers, {args.requests} single-partition "
            f"requests, one every {PACE}s:"
        )
        for kind in kinds:
            await measure_dispatch(kind, args.requests, args.warm, root, owner)
        print("The same without a warm pool (min_warm 0, max_partitions 1: a fresh container per partition):")
        for kind in kinds:
            await measure_dispatch(kind, args.requests, args.warm, root, owner, cold=True)
        for limit in (args.warm, len(FOUR_TENANTS) + 1):
            print(
                f"What isolation costs: the same {args.requests} requests taking turns among 4 tenants (projects a "
                f"and b, each a trusted push and a pull request), {limit} containers at most, none warm at first:"
            )
            for kind in kinds:
                for tenants, isolation, label in (
                    (ONE_TENANT, "tenant", "one tenant"),
                    (FOUR_TENANTS, "tenant", "4 tenants, isolation: tenant"),
                    (FOUR_TENANTS, "run", "4 tenants, isolation: run"),
                ):
                    await measure_dispatch(
                        kind, args.requests, limit, root, owner, False, tenants, isolation, f"{kind} {label}", False
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
