"""Bad input gets a clear 4xx or a reported error, and disturbs nothing already accepted."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import script, task


async def test_malformed_and_unknown_tag_requests_are_refused_without_disturbing_others(start_stack, tmp_path):
    infrax = await start_stack()
    marker = tmp_path / "started"
    slow = script(tmp_path, "slow.sh", f"touch {marker}\nsleep 1\necho done\n")
    accepted = await infrax.submit([task("accepted", slow)])

    missing_name = await infrax["scheduler"].post("/api/v1/task-requests", json={"tasks": [{"files": []}]})
    assert missing_name.status_code == 422
    assert "tasks.0.name: Field required" in missing_name.json()["detail"]
    assert "tasks.0.containerTag: Field required" in missing_name.json()["detail"]

    not_json = await infrax["scheduler"].post(
        "/api/v1/task-requests", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422 and "JSON" in not_json.json()["detail"]

    wrong_type = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"tasks": [task("x", slow, maxRunTime="soon")]}
    )
    assert wrong_type.status_code == 422 and "tasks.0.maxRunTime" in wrong_type.json()["detail"]

    unknown_tag = await infrax["scheduler"].post(
        "/api/v1/task-requests", json={"tasks": [{**task("win", slow), "containerTag": ["windows_10"]}]}
    )
    assert unknown_tag.status_code == 422
    detail = unknown_tag.json()["detail"]
    assert "task 'win': no container type has tags ['windows_10']" in detail and "linux_x86_64" in detail

    listed = (await infrax["scheduler"].get("/api/v1/task-requests")).json()
    assert [r["id"] for r in listed] == [accepted["id"]], "a refused request was stored"
    request = await infrax.wait_request(accepted["id"])
    assert request.state == "completed"


async def test_bootstrapper_answering_404_is_reported_as_a_failure_that_says_so(start_stack):
    infrax = await start_stack()
    missing = str(infrax["executioner"].base_url) + "/no/such/bootstrapper.sh"
    submitted = await infrax.submit([task("missing", missing, retries=0)])

    request = await infrax.wait_request(submitted["id"])

    partition = request.tasks[0].partitions[0]
    assert partition.state == "failed"
    assert "404" in (partition.message or "") and "bootstrapper" in (partition.message or "")


async def test_missing_bootstrapper_path_is_reported(start_stack, tmp_path: Path):
    infrax = await start_stack()
    submitted = await infrax.submit([task("missing", str(tmp_path / "nope.sh"))])

    request = await infrax.wait_request(submitted["id"])

    partition = request.tasks[0].partitions[0]
    assert partition.state == "failed" and "not found" in (partition.message or "")


async def test_an_assignment_without_its_runs_token_is_never_run_and_other_runs_go_on(start_stack, tmp_path: Path):
    # Even an admin's: only the scheduler makes a run's token, for the run it dispatched.
    infrax = await start_stack()
    ok = script(tmp_path, "ok.sh", "echo fine\n")
    journal = tmp_path / "forged-ran"
    forged_script = script(tmp_path, "forged.sh", f"touch {journal}\n")
    first = await infrax.submit([task("warm-up", ok)])
    await infrax.wait_request(first["id"])
    containers = (await infrax["provisioner"].get("/api/v1/containers")).json()
    idle = next(c for c in containers if c["state"] == "idle")

    offer = {
        "runId": "forged-0",
        "partitionId": "forged",
        "taskId": "t",
        "requestId": "r",
        "jobId": None,
        "taskName": "forged",
        "index": 1,
        "count": 1,
        "run": 0,
        "containerType": "linux_x86_64",
        "files": [],
        "bootstrapper": forged_script,
        "bootstrapperArguments": [],
        "env": {},
        "maxRunTime": 10,
    }
    for token in (None, "ifr_eyJyIjoiZm9yZ2VkLTAifQ.not-a-signature"):
        forged = {
            "offer": {**offer, "runToken": token},
            "containerId": idle["id"],
            "host": idle["host"],
            "port": idle["port"],
            "secret": "whatever",
        }
        response = await infrax["executioner"].post("/api/v1/runs", json={"assignments": [forged]})
        assert (response.status_code, response.json()) == (202, {"started": []})
        assert (await infrax["executioner"].get("/api/v1/runs/forged-0")).status_code == 404
        # Nor does the provisioner take such an offer.
        answer = await infrax["provisioner"].post("/api/v1/partitions", json={"offers": [offer | {"runToken": token}]})
        assert answer.json()["answers"][0]["accepted"] is False
        assert "run token" in answer.json()["answers"][0]["reason"]

    second = await infrax.submit([task("after", ok)])
    assert (await infrax.wait_request(second["id"])).state == "completed"
    assert not journal.exists(), "the forged bootstrapper ran"


async def test_unknown_ids_answer_404_with_a_message(start_stack):
    infrax = await start_stack()
    for component, path in [
        ("scheduler", "/api/v1/task-requests/nope"),
        ("scheduler", "/api/v1/partitions/nope"),
        ("executioner", "/api/v1/runs/nope-0"),
        ("jobmaster", "/api/v1/jobs/nope"),
    ]:
        response = await infrax[component].get(path)
        assert response.status_code == 404, path
        assert "nope" in response.json()["detail"]
