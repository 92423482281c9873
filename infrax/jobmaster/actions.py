"""What a person asks of a job: cancel it, run it again, run its failed partitions again.

A job is one revision of one project, and stays the one job however often it runs: running it
again makes a new task request under the same job (the earlier ones are kept in
`details.previousRequests`), running its failed partitions again makes each a new run of the same
partition (`infrax.scheduler.reruns`), so Treeherder shows the same chunk retried.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update

from infrax.bus import topics
from infrax.bus.messages import JobStatus
from infrax.jobmaster.checkout import Origin, supersedes
from infrax.model import Job, State, is_final, utcnow
from infrax.outbox import Outbox, Outgoing
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database
from infrax.store.tables import job_origins, job_tasks, jobs


class JobBusy(Exception):
    """What was asked needs the job to have ended (a 409)."""


class JobActions:
    db: Database
    outbox: Outbox
    scheduler: SchedulerClient

    if TYPE_CHECKING:

        async def get(self, job_id: str) -> Job: ...

        async def origins(self, job_id: str, host: str | None = None) -> list[dict[str, Any]]: ...

        async def _set_state(self, row: Any, state: State, message: str | None, **extra: Any) -> None: ...

        async def _submit(self, job_id: str) -> None: ...

    async def cancel(self, job_id: str, reason: str | None = None) -> Job:
        job = await self.get(job_id)
        if job.request_id:
            await self.scheduler.cancel_job(job_id, reason)
        elif not is_final(job.state):
            async with self.db.begin() as conn:
                row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
            await self._set_state(row, State.CANCELLED, reason or "cancelled before its tasks were submitted")
        return await self.get(job_id)

    async def supersede(self, head: Job, origin: Origin, default_branch: str | None = None) -> list[Job]:
        """Cancel the unfinished jobs of the older heads of `origin`'s pull request (or branch,
        where the project asks for it in `.infrax.yml`), their reason naming `head`'s revision. A
        job that something else also asked for (a branch push, another pull request, a person) is
        left to run: it is still wanted."""
        if not supersedes(head.details.get("supersede"), origin, default_branch):
            return []
        async with self.db.begin() as conn:
            found = await conn.execute(
                select(job_origins.c.job_id).where(
                    job_origins.c.host == origin.host,
                    job_origins.c.repository == origin.repository,
                    job_origins.c.ref == origin.ref,
                    job_origins.c.job_id != head.id,
                )
            )
            job_ids = list(dict.fromkeys(found.scalars()))
        cancelled = []
        for job_id in job_ids:
            job = await self.get(job_id)
            if is_final(job.state) or job.project != head.project or job.source == "cli":
                continue
            same = (origin.host, origin.repository, origin.ref)
            if any((o["host"], o["repository"], o["ref"]) != same for o in await self.origins(job_id)):
                continue
            cancelled.append(await self.cancel(job_id, f"superseded by {head.revision}"))
        return cancelled

    async def cancel_pull_request(self, repository: str, number: int) -> list[Job]:
        """Cancel the unfinished jobs of a closed pull request, except those a branch push also asked for."""
        ref = f"pull/{number}"
        async with self.db.begin() as conn:
            job_ids = (
                (
                    await conn.execute(
                        select(job_origins.c.job_id).where(
                            job_origins.c.host == "github",
                            job_origins.c.repository == repository,
                            job_origins.c.pull_request == number,
                        )
                    )
                )
                .scalars()
                .all()
            )
        cancelled = []
        for job_id in dict.fromkeys(job_ids):
            job = await self.get(job_id)
            others = [o for o in await self.origins(job_id) if not (o["host"] == "github" and o["ref"] == ref)]
            if is_final(job.state) or any(o["pull_request"] is None for o in others):
                continue
            cancelled.append(await self.cancel(job_id))
        return cancelled

    async def rerun(self, job_id: str, *, failed_only: bool = False) -> Job:
        """Run an ended job again: all of it as a new task request, or (`failed_only`) only its
        `failed` and `exception` partitions, each as its next run."""
        job = await self.get(job_id)
        if not is_final(job.state):
            raise JobBusy(f"job {job_id} is {job.state}: it can run again once it has ended (or cancel it)")
        if failed_only:
            if job.request_id is None:
                raise JobBusy(f"job {job_id} has no tasks that ran: re-run all of it")
            request = await self.scheduler.rerun_failed(job.request_id)
            # Running again from now, as the scheduler says: not `failed` until its news comes round.
            async with self.db.begin() as conn:
                row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().one()
            if row["request_id"] == request.id:
                await self._set_state(row, State(request.state), request.message)
            return await self.get(job_id)
        await self._run_again(job_id, "run again, as asked", any_end=True)
        return await self.get(job_id)

    async def _run_again(self, job_id: str, why: str, any_end: bool = False) -> None:
        """A new task request for the job, the earlier one kept in its history. Without `any_end`,
        only a job that was cancelled, or whose tasks the scheduler refused, runs again (a push of
        its revision: any other job is the push's answer as it is)."""
        async with self.outbox.begin() as (conn, messages):
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id).with_for_update())).mappings().one()
            refused = row["state"] == State.EXCEPTION and row["request_id"] is None
            allowed = is_final(row["state"]) if any_end else (row["state"] == State.CANCELLED or refused)
            if not allowed:
                return
            details = dict(row["details"] or {})
            details["previousRequests"] = [
                *details.get("previousRequests", []),
                *([row["request_id"]] if row["request_id"] else []),
            ]
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(state=State.PENDING, request_id=None, message=None, details=details, updated_at=utcnow())
            )
            await conn.execute(delete(job_tasks).where(job_tasks.c.job_id == job_id))
            messages.append(
                job_status(
                    job_id,
                    row["project"],
                    row["revision"],
                    State.PENDING,
                    State(row["state"]),
                    f"{why} after it was {'refused' if refused else row['state']}: running again",
                )
            )
        await self._submit(job_id)


def job_status(
    job_id: str, project: str, revision: str, state: State, previous: State | None, message: str | None = None
) -> Outgoing:
    status = JobStatus(
        job_id=job_id, project=project, revision=revision, state=state, previous_state=previous, message=message
    )
    return topics.JOBS, topics.routing_key(job_id, state=state), status
