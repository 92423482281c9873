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

    async def artifact_names(self, run_id: str) -> list[str] | None:
        """The names of what the run left (its log, `infrax/log.txt`, among them); None for a run
        this executioner does not know."""
        try:
            listed = await self.every(f"/api/v1/runs/{run_id}/artifacts", {"limit": 1000})
        except ServiceError as error:
            if error.status == 404:
                return None
            raise
        return [a["name"] for a in listed]

    async def log(self, run_id: str, offset: int = 0) -> tuple[str, int, bool]:
        response = await self.http.get(f"/api/v1/runs/{run_id}/log", params={"offset": offset})
        if response.status_code >= 400:
            raise ServiceError(self.service, response.status_code, response.text)
        return (response.text, int(response.headers["X-Log-Offset"]), response.headers.get("X-Log-Complete") == "true")


class ExecutionerPool:
    """Several executioners behind the one executioner interface: runs spread, questions go to all."""

    def __init__(self, clients: list[ExecutionerClient]) -> None:
        if not clients:
            raise ValueError("an executioner pool needs at least one executioner")
        self.clients = clients
        self._next = 0

    async def execute(self, assignments: list[ExecutionAssignment]) -> list[str]:
        # Round robin by batch, and on to the next executioner when one does not answer.
        last_error: ServiceError | None = None
        for _ in range(len(self.clients)):
            client = self.clients[self._next % len(self.clients)]
            self._next += 1
            try:
                return await client.execute(assignments)
            except ServiceError as error:
                if error.status is not None and error.status < 500:
                    raise
                last_error = error
        assert last_error is not None
        raise last_error

    async def cancel(self, run_ids: list[str]) -> list[str]:
        cancelled: list[str] = []
        for client in self.clients:
            try:
                cancelled += await client.cancel(run_ids)
            except ServiceError:
                continue
        return cancelled

    async def artifact_names(self, run_id: str) -> list[str] | None:
        for client in self.clients:
            names = await client.artifact_names(run_id)
            if names is not None:
                return names
        return None

    async def get_run(self, run_id: str) -> RunStatus | None:
        for client in self.clients:
            run = await client.get_run(run_id)
            if run is not None:
                return run
        return None
