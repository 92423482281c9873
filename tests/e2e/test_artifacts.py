"""What a partition leaves in $INFRAX_ARTIFACTS_DIR is kept, listed and downloaded over REST, its
log among it; a failing partition's JUnit file is there after the job ends."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from infrax.model import State
from tests.e2e.conftest import Running, agent_pid, script, task

JUNIT = '<?xml version="1.0"?><testsuite name="unit" tests="2" failures="1"><testcase name="a"/></testsuite>'

FAILS_WITH_REPORTS = f"""
mkdir -p "$INFRAX_ARTIFACTS_DIR/reports" "$INFRAX_ARTIFACTS_DIR/infrax"
printf '%s' '{JUNIT}' > "$INFRAX_ARTIFACTS_DIR/reports/junit.xml"
printf 'PNG' > "$INFRAX_ARTIFACTS_DIR/screenshot.png"
echo forged > "$INFRAX_ARTIFACTS_DIR/infrax/log.txt"
ln -s /etc/passwd "$INFRAX_ARTIFACTS_DIR/passwd"
echo "1 failed, 1 passed"
exit 1
"""


async def artifacts_of(infrax: Running, partition_id: str, **params: Any) -> list[dict[str, Any]]:
    response = await infrax["executioner"].get(f"/api/v1/partitions/{partition_id}/artifacts", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_a_failing_partitions_junit_file_is_downloaded_after_the_job_ends(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    bootstrapper = script(tmp_path, "fails.sh", FAILS_WITH_REPORTS)
    done = await infrax.wait_request((await infrax.submit([task("unit", bootstrapper)]))["id"])
    [partition] = done.tasks[0].partitions
    assert done.state == State.FAILED and partition.state == State.FAILED

    listed = await artifacts_of(infrax, partition.id)
    assert [(a["name"], a["contentType"]) for a in listed] == [
        ("infrax/log.txt", "text/plain; charset=utf-8"),
        ("reports/junit.xml", "application/xml; charset=utf-8"),
        ("screenshot.png", "image/png"),
    ], "the task's forged log and its link are not kept"
    junit = next(a for a in listed if a["name"] == "reports/junit.xml")
    assert junit["size"] == len(JUNIT) and junit["sha256"] == hashlib.sha256(JUNIT.encode()).hexdigest()

    response = await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts/reports/junit.xml")
    assert response.status_code == 200 and response.text == JUNIT
    assert response.headers["content-type"] == "application/xml; charset=utf-8"
    assert "sandbox" in response.headers["content-security-policy"], "a task's page cannot run as infrax's origin"
    assert (
        await infrax["executioner"].get(junit["url"].removeprefix(str(infrax["executioner"].base_url)))
    ).text == JUNIT

    log = (await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts/infrax/log.txt")).text
    assert "1 failed, 1 passed" in log and "forged" not in log
    assert re.search(r"artifact not kept: 'infrax/log.txt': names under infrax/ are infrax's own", log)
    assert "kept 2 artifacts" in log and log.rstrip().endswith("failed (exit code 1): exited with code 1")


async def test_artifact_lists_are_paginated_and_a_missing_one_is_a_404_naming_it(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    leaves = script(tmp_path, "leaves.sh", 'for n in 1 2 3 4 5; do echo $n > "$INFRAX_ARTIFACTS_DIR/f$n"; done\n')
    done = await infrax.wait_request((await infrax.submit([task("many", leaves)]))["id"])
    [partition] = done.tasks[0].partitions

    names, url = [], f"/api/v1/partitions/{partition.id}/artifacts?limit=2"
    while url:
        page = await infrax["executioner"].get(url)
        names += [a["name"] for a in page.json()]
        url = page.links.get("next", {}).get("url")
    assert names == ["f1", "f2", "f3", "f4", "f5", "infrax/log.txt"]

    missing = await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts/f9")
    assert missing.status_code == 404 and "f9" in missing.json()["detail"]
    unknown = await infrax["executioner"].get("/api/v1/partitions/nope/artifacts")
    assert unknown.status_code == 404 and "nope" in unknown.json()["detail"]
    assert (await artifacts_of(infrax, partition.id, run=0))[0]["name"] == "f1"
    assert (await infrax["executioner"].get(f"/api/v1/partitions/{partition.id}/artifacts?run=3")).status_code == 404


def _rss_peak_kb(pid: int | str) -> tuple[int, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _reset_peak(pid: int | str) -> int:
    """Start the process's peak RSS again from what it holds now (Linux: `clear_refs` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _rss_peak_kb(pid)[0]


@pytest.mark.parametrize("backend", ["embedded"], indirect=True)
async def test_a_200_mb_artifact_goes_up_and_down_in_bounded_memory(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    where = script(tmp_path, "where.sh", 'echo "work dir $INFRAX_WORK_DIR"\n')
    first = await infrax.wait_request((await infrax.submit([task("where", where)]))["id"])
    log = (
        await infrax["executioner"].get(
            f"/api/v1/partitions/{first.tasks[0].partitions[0].id}/artifacts/infrax/log.txt"
        )
    ).text
    agent = agent_pid(re.search(r"work dir (\S+)", log).group(1))  # type: ignore[union-attr]
    before = {"infrax up (every component)": _reset_peak("self"), "the agent": _reset_peak(agent)}

    big = script(tmp_path, "big.sh", 'head -c 200000000 /dev/urandom > "$INFRAX_ARTIFACTS_DIR/big.bin"\n')
    done = await infrax.wait_request((await infrax.submit([task("big", big)]))["id"])
    [partition] = done.tasks[0].partitions
    [artifact] = [a for a in await artifacts_of(infrax, partition.id) if a["name"] == "big.bin"]
    assert artifact["size"] == 200_000_000
    digest, size = hashlib.sha256(), 0
    async with infrax["executioner"].stream("GET", f"/api/v1/partitions/{partition.id}/artifacts/big.bin") as answer:
        assert answer.headers["content-length"] == "200000000"
        async for chunk in answer.aiter_bytes():
            digest.update(chunk)
            size += len(chunk)
    assert size == 200_000_000 and digest.hexdigest() == artifact["sha256"]

    grown = {
        name: (_rss_peak_kb("self" if name.startswith("infrax") else agent)[1] - rss) / 1024
        for name, rss in before.items()
    }
    print(f"200 MB up and down, peak memory growth (MB): {grown}")
    assert all(mb < 50 for mb in grown.values()), f"peak memory grew by {grown} MB"
