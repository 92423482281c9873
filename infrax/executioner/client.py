"""How other components call the executioner."""

from __future__ import annotations

from infrax.bus.messages import RunStatus
from infrax.http import ServiceClient, ServiceError
from infrax.model import ExecutionAssignment


class ExecutionerClient(ServiceClient):
    service = "executioner"

    async def execute(self, assignments: list[ExecutionAssignment]) -> list[str]:
        body = await self.call("POST", "/api/v1/runs", json={"assignments": [a.wire() for a in assignments]})
        return body["started"]

    async def cancel(self, run_ids: list[str]) -> list[str]:
        return (await self.call("POST", "/api/v1/runs/cancel", json={"runIds": run_ids}))["cancelled"]

    async def get_run(self, run_id: str) -> RunStatus | None:
        try:
            body = await self.call("GET", f"/api/v1/runs/{run_id}")
        except ServiceError as error:
            if error.status == 404:
                return None
            raise
        return RunStatus.model_validate(body["status"])

    async def log(self, run_id: str, offset: int = 0) -> tuple[str, int, bool]:
        response = await self.http.get(f"/api/v1/runs/{run_id}/log", params={"offset": offset})
        if response.status_code >= 400:
            raise ServiceError(self.service, response.status_code, response.text)
        return (response.text, int(response.headers["X-Log-Offset"]),
                response.headers.get("X-Log-Complete") == "true")
