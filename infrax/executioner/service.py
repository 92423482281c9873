"""The executioner: runs a partition on a container's agent, keeps its log, reports its status."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, TextIO

import httpx
from sqlalchemy import bindparam, insert, select, update

from infrax.agent.client import AgentClient, AgentConnectionLost, AgentError, AgentUnreachable
from infrax.agent.protocol import MAX_INLINE_BOOTSTRAPPER
from infrax.auth.runs import RunTokens
from infrax.batcher import Batcher
from infrax.bus import Bus, topics
from infrax.bus.messages import RunStatus
from infrax.http import ServiceError
from infrax.model import ExecutionAssignment, PartitionOffer, Release, utcnow
from infrax.provisioner.client import ProvisionerClient
from infrax.store import Conflict, Database
from infrax.store.tables import runs

log = logging.getLogger(__name__)

# What the agent's exit status means for the partition.
_RECORD_FINAL = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"))
    .values(
        {c: bindparam(f"b_{c}") for c in ("state", "exit_code", "message", "duration", "file_durations", "finished_at")}
    )
)
BOOTSTRAPPERS_KEPT = 64  # at most 64 × 512 KiB in memory
_AGENT_EXIT = {
    "completed": "completed",
    "failed": "failed",
    "timeout": "failed",
    "error": "failed",
    "cancelled": "cancelled",
}


class Executioner:
    def __init__(
        self,
        db: Database,
        bus: Bus,
        provisioner: ProvisionerClient,
        log_dir: Path,
        public_url: str,
        name: str = "executioner",
        *,
        run_tokens: RunTokens | None = None,
        jobmaster_url: str | None = None,
        jobmaster: httpx.AsyncClient | None = None,
        project_secrets: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.name = name
        # With keys: an assignment runs only with its own run's token, the one the scheduler made.
        self.run_tokens = run_tokens
        # Bootstrappers under this URL are the job master's: fetched with the run's token.
        self.jobmaster_url = jobmaster_url.rstrip("/") + "/" if jobmaster_url else None
        # With a client of the job master: its bootstrappers are fetched here and passed inline, so an
        # agent needs no route to any infrax endpoint (a container may have no network at all).
        self.jobmaster = jobmaster
        # Given to runs of trusted pushes only (`offer.trusted`); every value is cut out of every log.
        self.project_secrets = project_secrets or {}
        self._bootstrappers: OrderedDict[str, bytes] = OrderedDict()  # URL -> content: a revision's file
        self.db = db
        self.bus = bus
        self.provisioner = provisioner
        self.log_dir = Path(log_dir)
        self.public_url = public_url.rstrip("/")
        self.active: dict[str, ExecutionAssignment] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running_published: dict[str, asyncio.Task[None]] = {}  # run id -> its `running` going out
        self._finals = Batcher(self._record_finals, max_batch=500)
        self._releases = Batcher(self._release, max_batch=500)

    async def start(self) -> None:
        """Runs that were in flight when the executioner stopped are lost: report them so."""
        self._finals.start()
        self._releases.start()
        async with self.db.begin() as conn:
            orphans = (
                (
                    await conn.execute(
                        select(runs).where(runs.c.state.in_(["accepted", "running"]), runs.c.executioner == self.name)
                    )
                )
                .mappings()
                .all()
            )
        for row in orphans:
            assignment = ExecutionAssignment.model_validate(row["assignment"])
            status = self._status(
                assignment, "exception", message="the executioner restarted while the run was in flight"
            )
            await self._finish(assignment, status, healthy=False)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        await self._finals.stop()
        await self._releases.stop()

    # -- taking runs ------------------------------------------------------------------------

    async def execute(self, assignments: list[ExecutionAssignment]) -> list[str]:
        """Start each run not seen before; a repeated assignment of a known run is ignored."""
        # Once each: the same run twice in one batch is one run.
        fresh = list({a.offer.run_id: a for a in assignments if a.offer.run_id not in self.active}.values())
        fresh = [a for a in fresh if self._genuine(a)]
        if not fresh:
            return []
        try:
            await self._insert(fresh)
        except Conflict:  # some were seen before this process started: keep only the new ones
            async with self.db.begin() as conn:
                known = set(
                    (
                        await conn.execute(
                            select(runs.c.run_id).where(runs.c.run_id.in_([a.offer.run_id for a in fresh]))
                        )
                    ).scalars()
                )
            fresh = [a for a in fresh if a.offer.run_id not in known]
            if fresh:
                await self._insert(fresh)
        for assignment in fresh:
            run_id = assignment.offer.run_id
            self.active[run_id] = assignment
            self._tasks[run_id] = asyncio.create_task(self._run(assignment), name=f"run-{run_id}")
        return [a.offer.run_id for a in fresh]

    def _genuine(self, assignment: ExecutionAssignment) -> bool:
        """Whether the assignment carries the token of exactly its run (run id, partition, run number)."""
        if self.run_tokens is None:
            return True
        offer = assignment.offer
        claims = self.run_tokens.check(offer.run_token or "")
        if claims is None or (claims.run_id, claims.partition_id, claims.run) != (
            offer.run_id,
            offer.partition_id,
            offer.run,
        ):
            log.warning(
                "refused run %s of partition %s: its run token is not that run's", offer.run_id, offer.partition_id
            )
            return False
        return True

    async def _insert(self, assignments: list[ExecutionAssignment]) -> None:
        now = utcnow()
        async with self.db.each_alone() as conn:  # one INSERT of all rows: all or none
            await conn.execute(
                insert(runs),
                [
                    {
                        "run_id": a.offer.run_id,
                        "partition_id": a.offer.partition_id,
                        "executioner": self.name,
                        # Neither the agent's secret nor the run's token: the store is no place to find them.
                        "assignment": {**a.wire(), "secret": "", "offer": {**a.offer.wire(), "runToken": None}},
                        "state": "accepted",
                        "log_path": str(self.log_path(a.offer.run_id)),
                        "created_at": now,
                    }
                    for a in assignments
                ],
            )

    def log_path(self, run_id: str) -> Path:
        # 256 directories by the id's first two characters, made when first missing, rather than one
        # per partition: making a directory for every run was a tenth of the executioner's own work.
        return self.log_dir / run_id[:2] / f"{run_id}.log"

    def log_url(self, run_id: str) -> str:
        return f"{self.public_url}/api/v1/runs/{run_id}/log"

    async def _run(self, assignment: ExecutionAssignment) -> None:
        offer = assignment.offer
        path = self.log_path(offer.run_id)
        client = AgentClient(assignment.host, assignment.port, assignment.secret)
        started = time.monotonic()
        healthy = True
        with _open_log(path) as log_file:
            log_file.write(
                f"[infrax] run {offer.run_id}: {offer.task_name} {offer.index}/{offer.count} "
                f"on {assignment.container_id} ({assignment.host}:{assignment.port})\n"
            )
            try:
                final = await self._stream(client, assignment, log_file)
            except (AgentConnectionLost, AgentUnreachable) as error:
                healthy = False
                final = self._status(assignment, "exception", message=f"lost the agent: {error}")
            except AgentError as error:
                healthy = False
                final = self._status(assignment, "exception", message=f"agent refused the run ({error.code}): {error}")
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any surprise still has to end the run
                log.exception("run %s failed in the executioner", offer.run_id)
                healthy = False
                final = self._status(assignment, "exception", message=f"executioner error: {error!r}")
            if final.duration is None:
                final.duration = round(time.monotonic() - started, 3)
            log_file.write(
                f"[infrax] {final.state}"
                f"{'' if final.exit_code is None else f' (exit code {final.exit_code})'}"
                f"{'' if not final.message else f': {final.message}'}\n"
            )
        await self._finish(assignment, final, healthy)

    async def _stream(self, client: AgentClient, assignment: ExecutionAssignment, log_file: Any) -> RunStatus:
        async for message in client.run(await self._agent_request(assignment.offer)):
            kind = message.get("type")
            if kind == "output":
                log_file.write(self._redacted(assignment.offer.project, message["data"]))
                log_file.flush()
            elif kind == "started":
                # Not awaited: the broker's confirm (tens of ms under load) would hold up reading the
                # run's output, and a short run's end. `_finish` waits for it before the final status.
                self._running_published[assignment.offer.run_id] = asyncio.create_task(
                    self._publish(self._status(assignment, "running"))
                )
            elif kind == "exit":
                return self._status(
                    assignment,
                    _AGENT_EXIT.get(message["status"], "failed"),
                    exit_code=message.get("exitCode"),
                    message=message.get("message") or None,
                    duration=message.get("duration"),
                    file_durations=message.get("fileDurations"),
                )
        raise AgentConnectionLost("the agent closed the stream without an exit status")

    def _redacted(self, project: str, text: str) -> str:
        """Output with the project's secret values replaced (also from runs that did not get them: a
        secret printed by another way is still one). A value split across two output messages is not
        caught; agents send whole lines where they can."""
        for value in self.project_secrets.get(project, {}).values():
            if value and value in text:
                text = text.replace(value, "[redacted]")
        return text

    async def _jobmasters_file(self, url: str) -> bytes | None:
        """A bootstrapper the job master serves, fetched with this executioner's token (and kept:
        a revision's file does not change); None when it cannot be had here, or is too large to
        pass inline: then the agent fetches it with the run's token."""
        cached = self._bootstrappers.get(url)
        if cached is not None:
            self._bootstrappers.move_to_end(url)
            return cached
        if self.jobmaster is None or self.jobmaster_url is None:
            return None
        try:
            response = await self.jobmaster.get("/" + url[len(self.jobmaster_url) :])
        except httpx.HTTPError as error:
            log.warning("could not fetch bootstrapper %s: %r; its agent will", url, error)
            return None
        if response.status_code != 200 or len(response.content) > MAX_INLINE_BOOTSTRAPPER:
            return None  # the agent's own fetch reports a 404 as the task's own error
        self._bootstrappers[url] = response.content
        while len(self._bootstrappers) > BOOTSTRAPPERS_KEPT:
            self._bootstrappers.popitem(last=False)
        return response.content

    async def _agent_request(self, offer: PartitionOffer) -> dict[str, Any]:
        # The project's secrets for a trusted push, over the task's env; the run variables over both.
        secrets = self.project_secrets.get(offer.project, {}) if offer.trusted else {}
        env = {
            **offer.env,
            **secrets,
            "INFRAX_PARTITION_ID": offer.partition_id,
            "INFRAX_TASK_ID": offer.task_id,
            "INFRAX_TASK_NAME": offer.task_name,
            "INFRAX_CHUNK": str(offer.index),
            "INFRAX_TOTAL_CHUNKS": str(offer.count),
            "INFRAX_RUN": str(offer.run),
            "INFRAX_PROJECT": offer.project,
            "INFRAX_REVISION": offer.revision or "",
        }
        served: dict[str, Any] = {}
        if self.jobmaster_url and offer.bootstrapper.startswith(self.jobmaster_url):
            content = await self._jobmasters_file(offer.bootstrapper)
            if content is not None:
                served = {"bootstrapperContent": base64.b64encode(content).decode()}
            elif offer.run_token:
                served = {"bootstrapperToken": offer.run_token}  # for the job master only, never another host
        return {
            **served,
            "type": "run",
            "runId": offer.run_id,
            "bootstrapper": offer.bootstrapper,
            "bootstrapperArguments": offer.bootstrapper_arguments,
            "files": offer.files,
            "env": env,
            "maxRunTime": offer.max_run_time,
        }

    def _status(self, assignment: ExecutionAssignment, state: str, **fields: Any) -> RunStatus:
        offer = assignment.offer
        return RunStatus(
            run_id=offer.run_id,
            partition_id=offer.partition_id,
            task_id=offer.task_id,
            request_id=offer.request_id,
            job_id=offer.job_id,
            run=offer.run,
            container_type=offer.container_type,
            container_id=assignment.container_id,
            state=state,  # type: ignore[arg-type]  # one of RunStatus's states, by every caller
            log_url=self.log_url(offer.run_id),
            **fields,
        )

    async def _finish(self, assignment: ExecutionAssignment, status: RunStatus, healthy: bool) -> None:
        # The store first: a crash after this still knows the outcome and the scheduler asks for it.
        await self._finals.submit(status)
        run_id = assignment.offer.run_id
        release = Release(
            container_id=assignment.container_id,
            run_id=run_id,
            healthy=healthy,
            reason=None if healthy else status.message,
        )
        # The outcome is stored: the container can go back while the bus confirms the news.
        try:
            await asyncio.gather(self._publish_final(status), self._releases.submit(release))
        finally:
            self.active.pop(run_id, None)
            self._tasks.pop(run_id, None)

    async def _publish_final(self, status: RunStatus) -> None:
        running = self._running_published.pop(status.run_id, None)
        if running is not None:
            try:
                await running  # `running` first, so nobody sees a run end before it began
            except Exception as error:  # noqa: BLE001 - the final status still has to go out
                log.warning("could not publish that run %s started: %s", status.run_id, error)
        await self._publish(status)

    async def _release(self, releases: list[Release]) -> None:
        try:
            await self.provisioner.release_many(releases)
        except ServiceError as error:
            # The container is the provisioner's to sort out; the run's outcome is already recorded.
            log.warning("could not release %d containers: %s", len(releases), error)

    async def _record_finals(self, statuses: list[RunStatus]) -> None:
        async with self.db.each_alone() as conn:  # each run's row alone: a retry just writes it again
            await conn.execute(
                _RECORD_FINAL,
                [
                    {
                        "b_run_id": s.run_id,
                        "b_state": s.state,
                        "b_exit_code": s.exit_code,
                        "b_message": s.message,
                        "b_duration": s.duration,
                        "b_file_durations": s.file_durations,
                        "b_finished_at": s.timestamp,
                    }
                    for s in statuses
                ],
            )

    async def _publish(self, status: RunStatus) -> None:
        await self.bus.publish(
            topics.RUNS,
            topics.routing_key(
                status.job_id, status.task_id, status.partition_id, status.run, status.container_type, status.state
            ),
            status.wire(),
        )

    async def finished(self, run_id: str) -> None:
        """Until this process is done with the run: its end stored and published, its container released."""
        task = self._tasks.get(run_id)
        if task is not None:
            await asyncio.shield(task)

    # -- queries and cancel -----------------------------------------------------------------

    async def get_run(self, run_id: str) -> tuple[RunStatus, Path] | None:
        async with self.db.begin() as conn:
            row = (await conn.execute(select(runs).where(runs.c.run_id == run_id))).mappings().first()
        if row is None:
            return None
        assignment = ExecutionAssignment.model_validate(row["assignment"])
        state = {"accepted": "running"}.get(row["state"], row["state"])
        status = self._status(
            assignment,
            state,
            exit_code=row["exit_code"],
            message=row["message"],
            duration=row["duration"],
            file_durations=row["file_durations"],
        )
        return status, Path(row["log_path"])

    async def cancel(self, run_ids: list[str]) -> list[str]:
        cancelled = []
        for run_id in run_ids:
            assignment = self.active.get(run_id)
            if assignment is None:
                continue
            client = AgentClient(assignment.host, assignment.port, assignment.secret)
            try:
                if await client.cancel(run_id):
                    cancelled.append(run_id)
            except (AgentError, AgentConnectionLost, AgentUnreachable) as error:
                # The run's own stream will end with the agent, and report it.
                log.warning("cancel of %s failed: %s", run_id, error)
        return cancelled


def _open_log(path: Path) -> TextIO:
    try:
        return path.open("w", encoding="utf-8")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("w", encoding="utf-8")
