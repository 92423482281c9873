"""Running a job again: its failed partitions only, each as its next run of the same partition, or
all of it as a new task request under the same job; every earlier run's log kept."""

from __future__ import annotations

from pathlib import Path

from tests.jobmaster.conftest import commit, git, job_in


def journal_lines(journal: Path) -> list[str]:
    return journal.read_text().splitlines() if journal.exists() else []


async def test_failed_partitions_run_again_alone_then_the_whole_job(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    jobmaster = infrax["jobmaster"]
    journal, fixed = tmp_path / "journal", tmp_path / "fixed"
    run = tmp_path / "run.sh"
    # b.py fails until `fixed` exists; every run writes its run number and files to the journal.
    run.write_text(
        f'#!/bin/sh\necho "$INFRAX_RUN $*" >> {journal}\ncase "$*" in *b.py*) [ -f {fixed} ] || exit 1;; esac\n'
    )
    run.chmod(0o755)
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet")
    git(repo, "config", "user.email", "a@infrax.invalid")
    git(repo, "config", "user.name", "a")
    config = (
        "version: 1\nproject: reruns\ntasks:\n"
        f"  - {{name: unit, containerTag: linux_x86_64, bootstrapper: {run}, files: [a.py, b.py, c.py],"
        " partitions: 3, retries: 0, checkout: false}\n"
    )
    commit(repo, {".infrax.yml": config, "a.py": "", "b.py": "", "c.py": ""}, "first")
    pushed = await jobmaster.post("/api/v1/pushes", json={"repository": str(repo)})
    assert pushed.status_code == 201, pushed.text
    job_id = pushed.json()["id"]
    job = await job_in(jobmaster, job_id, "completed", "failed", "exception")
    assert job["state"] == "failed" and sorted(journal_lines(journal)) == ["0 a.py", "0 b.py", "0 c.py"]

    fixed.touch()
    again = await jobmaster.post(f"/api/v1/jobs/{job_id}/rerun", params={"failed": "true"})
    assert again.status_code == 200, again.text
    assert again.json()["state"] in ("queued", "running"), "the answer says it runs again, not the old end"
    job = await job_in(jobmaster, job_id, "completed", timeout=60)
    assert job["state"] == "completed" and job["message"] is None
    assert journal_lines(journal)[3:] == ["1 b.py"], "only the failed partition ran again, as its run 1"
    request = await infrax.request(job["requestId"])
    (b,) = [p for p in request.tasks[0].partitions if p.files == ["b.py"]]
    assert (b.run, b.state) == (1, "completed")
    first_log = await infrax["executioner"].get(f"/api/v1/runs/{b.id}-0/log")
    assert first_log.status_code == 200 and "failed (exit code 1)" in first_log.text  # run 0's log kept
    nothing = await jobmaster.post(f"/api/v1/jobs/{job_id}/rerun", params={"failed": "true"})
    assert nothing.status_code == 409 and "no failed partition" in nothing.json()["detail"]

    whole = await jobmaster.post(f"/api/v1/jobs/{job_id}/rerun")
    assert whole.status_code == 200, whole.text
    job = await job_in(jobmaster, job_id, "completed", timeout=60)
    assert job["state"] == "completed" and job["id"] == job_id
    assert job["details"]["previousRequests"] == [request.id] and job["requestId"] != request.id
    assert sorted(journal_lines(journal)[4:]) == ["0 a.py", "0 b.py", "0 c.py"]
    busy = await jobmaster.get(f"/api/v1/jobs/{job_id}")
    assert busy.json()["state"] == "completed"
