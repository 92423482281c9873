"""Artifacts out of a real Podman container with no network: a failing partition's JUnit file is
downloaded after its job ends, and a link to the container's secrets gives nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infrax.model import ContainerType, State
from tests.provisioner.stacks import bootstrapper, running_stack, task

JUNIT = '<testsuite name="unit" tests="1" failures="1"><testcase name="a"><failure/></testcase></testsuite>'


async def test_a_failing_partitions_junit_file_comes_out_of_its_container(
    tmp_path: Path, scripts: Path, docker_provider: Any
) -> None:
    fails = bootstrapper(
        scripts,
        "fails.sh",
        f"""mkdir -p "$INFRAX_ARTIFACTS_DIR/reports"
printf '%s' '{JUNIT}' > "$INFRAX_ARTIFACTS_DIR/reports/junit.xml"
ln -s /proc/1/environ "$INFRAX_ARTIFACTS_DIR/environ"
ln -s / "$INFRAX_ARTIFACTS_DIR/root"
echo "1 failed"
exit 1
""",
    )
    linux = ContainerType(name="linux", tags=["linux"], providers=["podman"], max_concurrent=1, memory="128m")
    async with running_stack(tmp_path / "data", [linux], [docker_provider("podman")]) as stack:
        request = await stack.submit(task("unit", fails))
        done = await stack.wait_request(request.id, timeout=90)
        [partition] = await stack.partitions(request.id)
        executioner = stack.stack.client("executioner", token=stack.stack.admin_token)
        listed = (await executioner.get(f"/api/v1/partitions/{partition.id}/artifacts")).json()
        junit = await executioner.get(f"/api/v1/partitions/{partition.id}/artifacts/reports/junit.xml")
        stolen = await executioner.get(f"/api/v1/partitions/{partition.id}/artifacts/root/etc/passwd")

    assert done.state == State.FAILED and partition.state == State.FAILED
    # Its report came out of the container, beside its log and (it failed) the errorsummary for Treeherder.
    assert [a["name"] for a in listed] == ["infrax/log.txt", "infrax/tests_errorsummary.log", "reports/junit.xml"]
    assert junit.status_code == 200 and junit.text == JUNIT
    assert stolen.status_code == 404
