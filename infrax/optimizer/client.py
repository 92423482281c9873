"""How other components call the optimizer."""

from __future__ import annotations

from infrax.http import ServiceClient
from infrax.model import ExecutionPlan, PlanRequest
from infrax.optimizer.history import FileRuntime


class OptimizerClient(ServiceClient):
    service = "optimizer"

    async def plan(self, request: PlanRequest, *, explain: bool = False) -> ExecutionPlan:
        params = {"explain": "true"} if explain else None
        response = await self._send("POST", "/api/v1/plans", json=request.wire(), params=params)
        return ExecutionPlan.model_validate_json(response.content)  # parsed and checked in one pass

    async def history(self, project: str, task_name: str, container_type: str | None = None) -> list[FileRuntime]:
        """The learned runtime of each file of a task (all container types unless one is named)."""
        params = {"project": project, "task": task_name}
        if container_type:
            params["containerType"] = container_type
        body = await self.call("GET", "/api/v1/history", params=params)
        return [FileRuntime.model_validate(row) for row in body]
