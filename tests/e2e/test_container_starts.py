"""A container type's own start is learned from the provisioner's measures, not set by hand: after
three containers started, the optimizer's figure is within 20% of their measured mean, and the next
plan weighs each partition with it."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from infrax.bus import Message, topics
from infrax.model import ContainerType
from tests.e2e.conftest import script, task

THREE_AT_ONCE = [ContainerType(name="linux_x86_64", tags=["linux_x86_64"], max_concurrent=3, idle_timeout=60)]


async def test_the_learned_start_of_a_container_type_is_its_measured_mean(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack(container_types=THREE_AT_ONCE)
    started: list[dict[str, Any]] = []

    async def collect(message: Message) -> None:
        if message.body["event"] == "started":
            started.append(message.body)

    await infrax.stack.bus.subscribe("test-starts", topics.CONTAINERS, ["#"], collect)
    # Three partitions that wait for each other: each needs a container of its own.
    gate = tmp_path / "gate"
    body = f'touch {gate}.$INFRAX_CHUNK\nwhile [ "$(ls {gate}.* | wc -l)" -lt 3 ]; do sleep 0.05; done\n'
    waits = script(tmp_path, "waits.sh", body)
    three = task("three", waits, ["a.py", "b.py", "c.py"], partitions=3)
    done = await infrax.wait_request((await infrax.submit([three], project="starts"))["id"])
    assert done.state == "completed"
    assert len({p.container_id for p in done.tasks[0].partitions}) == 3

    learned: list[dict[str, Any]] = []
    for _ in range(100):  # learned from the bus
        learned = (await infrax["optimizer"].get("/api/v1/container-starts")).json()
        if learned and learned[0]["samples"] >= 3:
            break
        await asyncio.sleep(0.1)
    measured = [e["startSeconds"] for e in started]
    assert len(measured) == 3 and learned[0]["containerType"] == "linux_x86_64" and learned[0]["samples"] == 3
    assert abs(learned[0]["seconds"] - statistics.fmean(measured)) <= 0.2 * statistics.fmean(measured)
    # The provisioner's own histogram of those starts says the same.
    metrics = (await infrax["provisioner"].get("/metrics")).text
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    samples = {s.name: s.value for f in families.values() for s in f.samples if "start_seconds" in s.name}
    histogram_mean = (
        samples["infrax_provisioner_container_start_seconds_sum"]
        / samples["infrax_provisioner_container_start_seconds_count"]
    )
    assert abs(learned[0]["seconds"] - histogram_mean) <= 0.2 * histogram_mean

    # The next plan weighs a partition with it, in place of the configured overhead (0).
    again = await infrax.wait_request((await infrax.submit([task("one", waits, ["d.py"])], project="starts"))["id"])
    explanation = " ".join(again.tasks[0].explanation or [])
    assert f"{learned[0]['seconds']:.1f} s of linux_x86_64's own start (learned over 3 start(s))" in explanation
