"""The provisioner's REST API: containers with their provider, age and heartbeat; Prometheus metrics."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from infrax.model import Container, ContainerState, ContainerType
from infrax.provisioner.app import create_app
from infrax.store import Database
from tests.conftest import secured

from .conftest import MakeHarness, make_offer, wait_for


async def test_containers_and_metrics(harness: MakeHarness, tmp_path: Path) -> None:
    linux = ContainerType(name="linux", tags=["linux"], providers=["local"], min_warm=1, max_concurrent=2)
    made = await harness([linux], [harness.provider("local", capacity=2, heartbeat_interval=0.3)])  # type: ignore[attr-defined]
    made.provisioner.offer([make_offer()])
    await wait_for(lambda: made.slots(ContainerState.BUSY) and made.slots(ContainerState.IDLE), what="busy and idle")
    await wait_for(lambda: all(s.last_heartbeat for s in made.provisioner.slots.values()), what="heartbeats")
    made.provisioner.offer([make_offer(), make_offer()])  # one goes to the idle container, one is rejected

    database = Database(f"sqlite:///{tmp_path / 'auth.db'}")
    security, admin = await secured(database)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(made.provisioner, security)),
        base_url="http://provisioner",
        headers=admin,
    ) as http:
        listed = [Container.model_validate(c) for c in (await http.get("/api/v1/containers")).json()]
        raw = (await http.get("/api/v1/containers")).json()[0]
        metrics = (await http.get("/metrics")).text
    await database.close()

    assert {c.state for c in listed} == {ContainerState.BUSY}
    assert all(c.provider == "local" and c.age > 0 and c.last_heartbeat is not None and c.port for c in listed)
    assert {"provider", "age", "lastHeartbeat", "heartbeatFailures", "currentRun"} <= set(raw)

    parsed = {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }

    def value(line: str) -> float:
        name, _, labels = line.partition("{")
        wanted = frozenset(re.findall(r'(\w+)="([^"]*)"', labels))
        assert (name, wanted) in parsed, f"no {line!r} in\n{metrics}"
        return parsed[(name, wanted)]

    assert value('infrax_provisioner_containers{type="linux",provider="local",state="busy"}') == 2
    assert value('infrax_provisioner_containers{type="linux",provider="local",state="idle"}') == 0
    assert value('infrax_provisioner_partitions_total{outcome="accepted"}') == 2
    assert value('infrax_provisioner_partitions_total{outcome="rejected"}') == 1
    assert value('infrax_provisioner_offers_total{type="linux",outcome="accepted"}') == 2
    assert value('infrax_provisioner_rejections_total{type="linux",reason="max_concurrent"}') == 1
    assert value('infrax_provisioner_container_start_seconds_count{provider="local"}') == 2
    assert value('infrax_provisioner_container_start_seconds_bucket{provider="local",le="+Inf"}') == 2
    assert value('infrax_provisioner_container_start_seconds_sum{provider="local"}') > 0
    assert value('infrax_provisioner_container_start_recent_seconds{provider="local",quantile="0.5"}') > 0
    assert value('infrax_provisioner_provider_up{provider="local"}') == 1
    assert value('infrax_provisioner_provider_containers{provider="local"}') == 2
    assert value('infrax_provisioner_provider_capacity{provider="local"}') == 2
    assert value('infrax_provisioner_heartbeats_total{outcome="sent"}') >= 2
    assert "# TYPE infrax_provisioner_container_start_seconds histogram" in metrics
    # Every sample line belongs to a declared family (a counter's samples end in _total).
    families = set(re.findall(r"^# TYPE (\S+) ", metrics, re.MULTILINE))
    for sample in re.findall(r"^([a-z_]+)[{ ]", metrics, re.MULTILINE):
        assert sample in families or re.sub(r"_(bucket|sum|count|total)$", "", sample) in families, sample
