"""How other components call the optimizer."""

from __future__ import annotations

from infrax.http import ServiceClient
from infrax.model import ExecutionPlan, PlanRequest


class OptimizerClient(ServiceClient):
    service = "optimizer"

    async def plan(self, request: PlanRequest) -> ExecutionPlan:
        body = await self.call("POST", "/api/v1/plans", json=request.wire())
        return ExecutionPlan.model_validate(body)
