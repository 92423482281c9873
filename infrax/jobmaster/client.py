"""How the CLI and other services call the job master."""

from __future__ import annotations

from infrax.http import ServiceClient
from infrax.model import Job, PushSubmission


class JobMasterClient(ServiceClient):
    service = "jobmaster"

    async def push(self, submission: PushSubmission) -> Job:
        return Job.model_validate(await self.call("POST", "/api/v1/pushes", json=submission.wire()))

    async def get(self, job_id: str) -> Job:
        return Job.model_validate(await self.call("GET", f"/api/v1/jobs/{job_id}"))

    async def find(self, revision: str) -> list[Job]:
        return [Job.model_validate(j) for j in await self.every("/api/v1/jobs", params={"revision": revision})]

    async def jobs(self, project: str | None = None, limit: int = 20) -> list[Job]:
        """The newest `limit` jobs (of a project), following the list's pages."""
        params = {"project": project, "limit": min(limit, 1000)} if project else {"limit": min(limit, 1000)}
        return [Job.model_validate(j) for j in await self.every("/api/v1/jobs", params=params, limit=limit)]

    async def rerun(self, job_id: str, failed: bool = False) -> Job:
        return Job.model_validate(
            await self.call("POST", f"/api/v1/jobs/{job_id}/rerun", params={"failed": str(failed).lower()})
        )

    async def cancel(self, job_id: str, reason: str | None = None) -> Job:
        body = {"reason": reason} if reason else None
        return Job.model_validate(await self.call("POST", f"/api/v1/jobs/{job_id}/cancel", json=body))
