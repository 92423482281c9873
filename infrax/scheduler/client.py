"""How other components (and the CLI) call the scheduler."""

from __future__ import annotations

from typing import Any

from infrax.http import ServiceClient
from infrax.model import TaskPartition, TaskRequest, TaskRequestSubmission


class SchedulerClient(ServiceClient):
    service = "scheduler"

    async def submit(self, submission: TaskRequestSubmission) -> TaskRequest:
        return TaskRequest.model_validate(await self.call("POST", "/api/v1/task-requests", json=submission.wire()))

    async def list_requests(self, job_id: str) -> list[TaskRequest]:
        body = await self.every("/api/v1/task-requests", params={"jobId": job_id})
        return [TaskRequest.model_validate(r) for r in body]

    async def get_request(self, request_id: str) -> TaskRequest:
        return TaskRequest.model_validate(await self.call("GET", f"/api/v1/task-requests/{request_id}"))

    async def cancel_request(self, request_id: str) -> TaskRequest:
        return TaskRequest.model_validate(await self.call("POST", f"/api/v1/task-requests/{request_id}/cancel"))

    async def cancel_job(self, job_id: str, reason: str | None = None) -> list[str]:
        body = {"reason": reason} if reason else None
        return (await self.call("POST", f"/api/v1/jobs/{job_id}/cancel", json=body))["cancelledRequests"]

    async def partitions(self, request_id: str) -> list[TaskPartition]:
        body = await self.every("/api/v1/partitions", params={"requestId": request_id})
        return [TaskPartition.model_validate(p) for p in body]

    async def rerun_failed(self, request_id: str) -> TaskRequest:
        return TaskRequest.model_validate(await self.call("POST", f"/api/v1/task-requests/{request_id}/rerun-failed"))

    async def summaries(self, request_ids: list[str], headers: dict[str, str] | None = None) -> dict[str, Any]:
        """{request id: RequestSummary's JSON}; kept as JSON: a push list of a thousand is 20,000 chunks."""
        if not request_ids:
            return {}
        body: dict[str, Any] = await self.call(
            "POST", "/api/v1/task-request-summaries", json={"requestIds": request_ids}, headers=headers
        )
        return body
