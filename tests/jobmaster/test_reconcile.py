"""A job whose request's final status never came over the bus still ends: the job master asks."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from infrax.bus import Message, topics
from infrax.bus.messages import TaskStatus
from infrax.sample_project import make_sample_repo
from infrax.store.tables import jobs
from tests.jobmaster.conftest import BOTH_BACKENDS, job_in


@BOTH_BACKENDS
async def test_a_job_that_missed_its_final_status_catches_up_from_the_scheduler(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    jobmaster_api = infrax["jobmaster"]
    good = make_sample_repo(tmp_path / "sample")
    pushed = await jobmaster_api.post("/api/v1/pushes", json={"repository": str(tmp_path / "sample"), "revision": good})
    assert pushed.status_code == 201, pushed.text
    job_id = pushed.json()["id"]
    assert (await job_in(jobmaster_api, job_id, "completed", "failed", "exception"))["state"] == "completed"

    # As if the scheduler had crashed between committing the request's end and publishing it.
    jobmaster = infrax.stack.services["jobmaster"]
    async with jobmaster.db.begin() as conn:
        await conn.execute(update(jobs).where(jobs.c.id == job_id).values(state="running"))
    assert (await jobmaster_api.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "running"

    assert await jobmaster.reconcile() == 1
    assert (await jobmaster_api.get(f"/api/v1/jobs/{job_id}")).json()["state"] == "completed"
    assert await jobmaster.reconcile() == 0  # nothing more to catch up


async def test_a_task_s_news_published_again_late_never_takes_it_back_from_its_end(start_stack, tmp_path: Path) -> None:
    infrax = await start_stack()
    jobmaster_api = infrax["jobmaster"]
    good = make_sample_repo(tmp_path / "sample")
    pushed = await jobmaster_api.post("/api/v1/pushes", json={"repository": str(tmp_path / "sample"), "revision": good})
    job = await job_in(jobmaster_api, pushed.json()["id"], "completed", "failed", "exception")
    (task,) = job["tasks"]
    assert task["state"] == "completed"

    # What a relay publishes again after a broker outage: the task's `running`, after its end.
    stale = TaskStatus(
        task_id=task["id"], request_id=job["requestId"], job_id=job["id"], name=task["name"], state="running",
        previous_state="queued",
    )  # fmt: skip
    jobmaster = infrax.stack.services["jobmaster"]
    await jobmaster._on_task_status(Message(topics.TASKS, "k", stale.model_dump(mode="json", by_alias=True)))
    assert [t["state"] for t in (await jobmaster_api.get(f"/api/v1/jobs/{job['id']}")).json()["tasks"]] == ["completed"]
