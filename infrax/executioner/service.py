"""The executioner: runs a partition on a container's agent, keeps its log, reports its status."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

import httpx
from sqlalchemy import bindparam, insert, select, update

from infrax.agent.client import AgentClient, AgentConnectionLost, AgentError, AgentUnreachable
from infrax.artifacts import FilesystemArtifacts
from infrax.auth.runs import RunTokens
from infrax.batcher import Batcher
from infrax.bus import Bus, BusError, topics
from infrax.bus.messages import RunStatus
from infrax.executioner.artifacts import ArtifactKeeper, MissingFetch
from infrax.executioner.metrics import ExecutionerMetrics
from infrax.executioner.run_requests import RunRequests, Unavailable
from infrax.executioner.sources import SourceUnavailable, stage_source
from infrax.executioner.takeover import Takeover
from infrax.executioner.test_results import TestResults
from infrax.failures import FailureLines, failure_message
from infrax.http import ServiceError, while_unavailable
from infrax.model import MAX_RERUN_TESTS, ExecutionAssignment, Release, run_id_of, utcnow
from infrax.outbox import Outbox, Outgoing
from infrax.private import open_private, private_dir
from infrax.provisioner.client import ProvisionerClient
from infrax.retry import outage, retry
from infrax.store import Conflict, Database, StoreError
from infrax.store.tables import executioner_outbox, runs
from infrax.test_reports import FAILING, TestResult, failure_summary, file_durations, rerun_names
from infrax.treeherder import error_summary

log = logging.getLogger(__name__)

KNOWN_INTERMITTENT_WINDOW = timedelta(days=30)  # a test intermittent this recently is known to be

# What the agent's exit status means for the partition.
_RECORD_FINAL = (
    update(runs)
    .where(runs.c.run_id == bindparam("b_run_id"))
    .values(
        {c: bindparam(f"b_{c}") for c in ("state", "exit_code", "message", "duration", "file_durations", "finished_at")}
    )
)
# A dropped connection to an agent is re-attached this many times (the run goes on meanwhile);
# an agent that no longer answers at all is gone, and so is its run.
REATTACH_ATTEMPTS = 5
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
        installation_url: str | None = None,
        jobmaster: httpx.AsyncClient | None = None,
        project_secrets: dict[str, dict[str, str]] | None = None,
        outage_deadline: float = 600.0,
        artifacts: ArtifactKeeper | None = None,
    ) -> None:
        self.name = name
        # How long an unreachable job master or provisioner is waited for before a run gives up on it.
        self.outage_deadline = outage_deadline
        # With keys: an assignment runs only with its own run's token, the one the scheduler made.
        self.run_tokens = run_tokens
        # The job master's client: sources are staged from it, bootstrappers fetched from it.
        self.jobmaster = jobmaster
        self.requests = RunRequests(jobmaster, jobmaster_url, installation_url, project_secrets or {}, outage_deadline)
        self.db = db
        self.bus = bus
        self.provisioner = provisioner
        self.log_dir = Path(log_dir)
        self.public_url = public_url.rstrip("/")
        self.active: dict[str, ExecutionAssignment] = {}
        self.metrics = ExecutionerMetrics(bus, lambda: len(self.active))
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running_published: dict[str, asyncio.Task[None]] = {}  # run id -> its `running` stored
        self._cancel_requested: set[str] = set()  # runs whose cancel was asked for: their end is `cancelled`
        self._cancel_delivered: set[str] = set()  # of those, the ones their agent said it stopped
        self._finals = Batcher(self._record_finals, max_batch=500)
        self._releases = Batcher(self._release, max_batch=500)
        # Every run status is written here with the run's state; the relay publishes it.
        self.outbox = Outbox(db, bus, executioner_outbox)
        self._resuming: asyncio.Task[None] | None = None
        # What runs leave, and their logs: kept before their end is stored, so a run seen ended has them.
        self.artifacts = artifacts or ArtifactKeeper(FilesystemArtifacts(self.log_dir / "artifacts"))
        self.artifacts.log_dir = self.log_dir
        self.test_results = TestResults(db, self.artifacts.store)
        self.takeover = Takeover(
            db, name, lambda rows: self._reattach(rows, "its executioner died"), lambda r: str(self.log_path(r))
        )

    async def start(self) -> None:
        """Re-attach to the runs that were in flight when this executioner stopped: they went on in
        their agents meanwhile. In the background: this executioner takes new runs at once."""
        self.outbox.start()
        self._finals.start()
        self._releases.start()
        self.artifacts.start()
        self._resuming = asyncio.create_task(self._resume(), name="executioner-resume")
        self.takeover.start()

    async def stop(self) -> None:
        await self.takeover.stop()
        if self._resuming is not None:
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()  # a stopped executioner is done with every run: `finished` waits for none
        await self._finals.stop()
        await self._releases.stop()
        await self.outbox.stop()
        await self.artifacts.stop()

    async def _resume(self) -> None:
        rows = await retry(self._in_flight_rows, on=StoreError, during=outage("the database"))
        await self._reattach(rows, "the executioner restarted")

    async def _reattach(self, rows: list[Any], why: str) -> None:
        """Follow these runs in flight again (this executioner's own after a restart, or taken over
        from one that died), through their agents; a run whose container is gone ended with it."""
        if not rows:
            return
        wanted = {row["run_id"]: ExecutionAssignment.model_validate(row["assignment"]) for row in rows}
        try:
            found = await while_unavailable(
                lambda: self.provisioner.access(list(wanted)), self.outage_deadline, outage("the provisioner")
            )
        except ServiceError as error:
            log.warning("cannot re-attach to %d runs: %s", len(wanted), error)
            found = []
        # Runs this process took since it started are its own already (read above as in flight, they
        # were accepted while this looked): re-attaching to one would follow it twice.
        wanted = {run_id: stored for run_id, stored in wanted.items() if run_id not in self.active}
        reachable = {access.run_id: access for access in found if access.run_id in wanted}
        log.info("re-attaching to %d of the %d runs in flight", len(reachable), len(wanted))
        for run_id, stored in wanted.items():
            access = reachable.get(run_id)
            if access is None:
                status = self._status(stored, "exception", message=f"{why} and the run's container is gone")
                self._tasks[run_id] = asyncio.create_task(self._finish(stored, status, healthy=False))
                continue
            assignment = stored.model_copy(
                update={
                    "container_id": access.container_id,
                    "host": access.host,
                    "port": access.port,
                    "secret": access.secret,
                }
            )
            self.active[run_id] = assignment
            self._tasks[run_id] = asyncio.create_task(self._run(assignment, resume=True), name=f"run-{run_id}")

    async def _in_flight_rows(self) -> list[Any]:
        async with self.db.begin() as conn:
            return list(
                (
                    await conn.execute(
                        select(runs).where(runs.c.state.in_(["accepted", "running"]), runs.c.executioner == self.name)
                    )
                )
                .mappings()
                .all()
            )

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

    async def _run(self, assignment: ExecutionAssignment, resume: bool = False) -> None:
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
            if resume:
                log_file.write(
                    "[infrax] the executioner restarted; re-attached to the run, its output from the start\n"
                )
            left: dict[str, Any] = {}
            failures = FailureLines()
            try:
                final, left = await self._follow(client, assignment, log_file, failures, attach=resume)
            except (Unavailable, SourceUnavailable) as error:
                final = self._status(assignment, "exception", message=str(error))
            except MissingFetch as error:
                final = self._status(assignment, "failed", message=str(error))
            except AgentUnreachable as error:
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
            if isinstance(left.get("unhealthy"), str):  # a run broke it: it is retired, not handed on
                healthy = False
                log_file.write(f"[infrax] the container is retired: {left['unhealthy'][:500]}\n")
            if final.duration is None:
                final.duration = round(time.monotonic() - started, 3)
            if isinstance(left.get("checkoutSeconds"), int | float):
                log_file.write(f"[infrax] checkout took {left['checkoutSeconds']:.2f} s\n")
            tests: list[TestResult] | None = None
            if left.get("artifacts") or left.get("artifactsOmitted"):

                def note(text: str) -> None:
                    log_file.write(f"[infrax] {text}\n")

                kept = await self.artifacts.keep(client, offer.run_id, left, note)
                tests = await self.test_results.read_reports(offer.run_id, kept.names, offer.files, note)
            if tests is not None:
                results = tests
                await retry(
                    lambda: self.test_results.record(offer, results),
                    on=StoreError,
                    maximum=2.0,
                    during=outage("the database"),
                )
                if final.file_durations is None:  # the reports' times, for the partition's own files only
                    final.file_durations = {f: s for f, s in file_durations(tests).items() if f in offer.files} or None
            if final.state == "failed" and tests:
                final.failing = rerun_names(tests, MAX_RERUN_TESTS)
                final.known_intermittent = await self._all_known_intermittent(offer.project, tests)
            if final.state == "failed" and tests:
                # The failing tests as Treeherder's log parsers read them: lines of the log, and an errorsummary.
                for line in error_summary.log_lines(tests):
                    log_file.write(f"{line}\n")
                if summary := error_summary.errorsummary(tests):
                    await self.artifacts.keep_own(offer.run_id, error_summary.ARTIFACT, summary, "text/plain")
            if final.state == "failed":
                failures.close()
                # The failing tests' names where the run reported them, else the failure lines of its output.
                final.message = failure_message(final.message, (tests and failure_summary(tests)) or failures.summary())
            log_file.write(
                f"[infrax] {final.state}"
                f"{'' if final.exit_code is None else f' (exit code {final.exit_code})'}"
                f"{'' if not final.message else f': {final.message}'}\n"
            )
        await self._finish(assignment, final, healthy)

    async def _follow(
        self, client: AgentClient, assignment: ExecutionAssignment, log_file: Any, failures: FailureLines, attach: bool
    ) -> tuple[RunStatus, dict[str, Any]]:
        """The run's messages until its exit; a dropped connection is re-attached from the next
        output message, the run going on in the agent meanwhile. Only an agent that is gone (no
        longer answers, or no longer knows the run) loses the run."""
        run_id = assignment.offer.run_id
        next_seq, drops = 0, 0
        checkout: dict[str, Any] | None = None
        if not attach:

            def note(text: str) -> None:
                log_file.write(f"[infrax] {text}\n")

            if assignment.offer.fetches:
                await self.artifacts.stage_fetches(client, assignment.offer, note)
            spool = self.log_dir / "spool"
            checkout = await stage_source(client, assignment.offer, self.jobmaster, spool, self.outage_deadline, note)
        while True:
            if not attach and run_id in self._cancel_requested:  # cancelled while it was being staged
                return self._status(assignment, "cancelled", message="cancelled before it started"), {}
            if attach:
                stream = client.attach(run_id, next_seq)
            else:
                request = await self.requests.build(assignment.offer)
                stream = client.run({**request, "checkout": checkout} if checkout else request)
            try:
                return await self._stream(stream, assignment, log_file, failures)
            except AgentConnectionLost as error:
                drops += 1
                if drops > REATTACH_ATTEMPTS:
                    raise AgentUnreachable(f"{error} (re-attached {REATTACH_ATTEMPTS} times)") from None
                if stream.last_seq is not None:
                    next_seq = stream.last_seq + 1
                attach = True  # a run the agent never got is then unknown to it: lost, and re-run
                log.info("run %s: connection to its agent dropped (%s); re-attaching from %d", run_id, error, next_seq)
                await asyncio.sleep(0.1 * drops)
            except AgentError as error:
                if attach and error.code == "unknown-run":
                    raise AgentUnreachable(f"the agent no longer has the run: {error}") from None
                raise

    async def _stream(
        self, stream: Any, assignment: ExecutionAssignment, log_file: Any, failures: FailureLines
    ) -> tuple[RunStatus, dict[str, Any]]:
        """The run's end, and the agent's `exit` message about it (the output's failure lines to `failures`)."""
        run_id = assignment.offer.run_id
        async for message in stream:
            if run_id in self._cancel_requested and run_id not in self._cancel_delivered:
                # A cancel that reached the agent before the run did found nothing to stop.
                self._cancel_delivered.add(run_id)
                await stream.cancel()
            kind = message.get("type")
            if kind == "output":
                text = self.requests.redacted(assignment.offer.project, message["data"])
                log_file.write(text)
                log_file.flush()
                failures.feed(text)
            elif kind == "gap":
                log_file.write(f"[infrax] {message.get('missed', 'some')} output messages were lost here\n")
            elif kind == "started" and run_id not in self._running_published:
                # Not awaited: storing it (and so its message) would hold up reading the run's output,
                # and a short run's end. `_finish` waits for it before the final status.
                self._running_published[run_id] = asyncio.create_task(self._announce_started(assignment))
            elif kind == "exit":
                return self._exit_status(assignment, message), message
        raise AgentConnectionLost("the agent closed the stream without an exit status")

    def _exit_status(self, assignment: ExecutionAssignment, message: dict[str, Any]) -> RunStatus:
        """The agent's exit, by whose fault it is: a run the agent stopped on its own (it was shut
        down) or whose bootstrapper infrax could not serve is the infrastructure's, and runs again."""
        state = _AGENT_EXIT.get(message["status"], "failed")
        text = message.get("message") or None
        if state == "cancelled" and assignment.offer.run_id not in self._cancel_requested:
            state, text = "exception", f"the agent stopped the run: {text or 'no reason given'}"
        elif message.get("infrastructure"):
            state = "exception"
        return self._status(
            assignment,
            state,
            exit_code=message.get("exitCode"),
            message=text,
            duration=message.get("duration"),
            file_durations=message.get("fileDurations"),
            checkout_seconds=message.get("checkoutSeconds"),
        )

    async def _all_known_intermittent(self, project: str, tests: list[TestResult]) -> bool:
        """Whether every failing test of the run failed and then passed on a re-run lately: the
        scheduler then runs it again even when the task's re-runs are used up."""
        failing = {r.test_id for r in tests if r.outcome in FAILING}
        if not failing or len(failing) > MAX_RERUN_TESTS:
            return False
        since = utcnow() - KNOWN_INTERMITTENT_WINDOW
        try:
            known = await self.test_results.known_intermittent(project, sorted(failing), since)
        except StoreError:  # only a hint: the run's end does not wait for it
            return False
        return known >= failing

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
        run_id = assignment.offer.run_id
        self.metrics.run_ended(status.state, status.duration)
        try:
            running = self._running_published.pop(run_id, None)
            if running is not None:
                await running  # `running` first, so nobody sees a run end before it began
            # Stored (with its message) before anything else: retried until it is, and only then is
            # the container given back. A crash after this still knows the outcome.
            await self._finals.submit(status)
            release = Release(
                container_id=assignment.container_id,
                run_id=run_id,
                healthy=healthy,
                reason=None if healthy else status.message,
            )
            await self._releases.submit(release)
        finally:
            self.active.pop(run_id, None)
            self._tasks.pop(run_id, None)
            self._cancel_requested.discard(run_id)
            self._cancel_delivered.discard(run_id)

    async def _announce_started(self, assignment: ExecutionAssignment) -> None:
        """`running` is news, not state this executioner stores (it stores a run's acceptance and its
        end): published at once, not through the outbox. If the broker is away it is dropped after
        its retries; the final status, which is stored and goes through the outbox, says all that
        matters, and always after this one (`_finish` waits for it)."""
        status = self._status(assignment, "running")
        try:
            await self.bus.publish(*_outgoing(status))
        except BusError as error:
            log.info("that run %s started was not published: %s", status.run_id, error)

    async def _release(self, releases: list[Release]) -> None:
        try:
            # A provisioner that is down or restarting is waited for: it adopts the containers.
            await while_unavailable(
                lambda: self.provisioner.release_many(releases), self.outage_deadline, outage("the provisioner")
            )
        except ServiceError as error:
            # The container is the provisioner's to sort out; the run's outcome is already recorded.
            log.warning("could not release %d containers: %s", len(releases), error)

    async def _record_finals(self, statuses: list[RunStatus]) -> None:
        async def store() -> None:
            async with self.outbox.begin() as (conn, messages):
                # Only this executioner's runs: one it was too slow to keep was taken over, and its
                # end is the taker's to record (the run is one run, its end one end).
                ids = [s.run_id for s in statuses]
                mine = set(
                    (
                        await conn.execute(
                            select(runs.c.run_id).where(runs.c.run_id.in_(ids), runs.c.executioner == self.name)
                        )
                    ).scalars()
                )
                owned = [s for s in statuses if s.run_id in mine]
                if len(owned) < len(statuses):
                    log.warning("%d runs ended here were taken over by another executioner", len(statuses) - len(owned))
                if not owned:
                    return
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
                        for s in owned
                    ],
                )
                messages += [_outgoing(s) for s in owned]

        # Until stored, however long the database is away: the outcome is the one thing not to lose.
        await retry(store, on=StoreError, maximum=2.0, during=outage("the database"))

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

    async def run_id_of(self, partition_id: str, run: int | None = None) -> str | None:
        """The id of the partition's run `run` this executioner had, or of its latest."""
        query = select(runs.c.run_id).where(runs.c.partition_id == partition_id)
        if run is not None:
            query = query.where(runs.c.run_id == run_id_of(partition_id, run))
        async with self.db.begin() as conn:
            return (await conn.execute(query.order_by(runs.c.created_at.desc()).limit(1))).scalar()

    async def cancel(self, run_ids: list[str]) -> list[str]:
        cancelled = []
        for run_id in run_ids:
            assignment = self.active.get(run_id)
            if assignment is None:
                continue
            self._cancel_requested.add(run_id)
            client = AgentClient(assignment.host, assignment.port, assignment.secret)
            try:
                if await client.cancel(run_id):
                    self._cancel_delivered.add(run_id)
                    cancelled.append(run_id)
            except (AgentError, AgentConnectionLost, AgentUnreachable) as error:
                # The run's own stream will end with the agent, and report it.
                log.warning("cancel of %s failed: %s", run_id, error)
        return cancelled


def _outgoing(status: RunStatus) -> Outgoing:
    key = topics.routing_key(
        status.job_id, status.task_id, status.partition_id, status.run, status.container_type, status.state
    )
    return topics.RUNS, key, status.wire()


def _open_log(path: Path) -> TextIO:
    try:
        return open_private(path)
    except FileNotFoundError:
        private_dir(path.parent)
        return open_private(path)
