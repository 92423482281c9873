"""`infrax` commands that use a running system: push, status, jobs, logs, tests, cancel, rerun.

Every job or partition id may be given as a unique prefix of 6 hex digits or more (a job also by
its revision, or a prefix of it); every read command takes `--json`.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import typer
from rich.table import Table

from infrax.cli_support import (
    JOB_DID_NOT_PASS,
    ConfigOption,
    JsonOption,
    NotFound,
    clients,
    console,
    load,
    print_json,
    run,
)
from infrax.console import Clients, job_table, show_failures, styled, watch_job
from infrax.http import ServiceError
from infrax.ids import ID_PREFIX
from infrax.model import Job, PushSubmission, TaskPartition, run_id_of

FULL_ID = 32


async def resolve_job(c: Clients, text: str) -> Job:
    """The job `text` names: its id, a unique prefix of it, or its revision (or a prefix of that)."""
    text = text.strip()
    if len(text) == FULL_ID:
        try:
            return await c.jobmaster.get(text)
        except ServiceError as error:
            if error.status != 404:
                raise
    if ID_PREFIX.match(text.lower()) and len(text) < FULL_ID:
        found = await c.jobmaster.call("GET", "/api/v1/jobs", params={"idPrefix": text.lower(), "limit": 3})
        if len(found) > 1:
            shown = ", ".join(j["id"][:12] for j in found[:2])
            raise NotFound(f"{text!r} is the start of more than one job's id ({shown}, …): give more of it")
        if found:
            return await c.jobmaster.get(found[0]["id"])
    by_revision = await c.jobmaster.find(text)
    if by_revision:
        return await c.jobmaster.get(by_revision[0].id)
    raise NotFound(f"no job or revision {text!r}")


async def resolve_partition(c: Clients, text: str) -> TaskPartition:
    text = text.strip().lower()
    if not ID_PREFIX.match(text):
        raise NotFound(f"{text[:70]!r} is no partition id: 6 to 32 hex digits (or give JOB TASK CHUNK)")
    found = await c.scheduler.call("GET", "/api/v1/partitions", params={"idPrefix": text, "limit": 3})
    if len(found) > 1:
        raise NotFound(f"{text!r} is the start of more than one partition's id: give more of it")
    if not found:
        raise NotFound(f"no partition {text!r}")
    return TaskPartition.model_validate(found[0])


async def partition_of_job(c: Clients, job_text: str, task: str, chunk: int) -> TaskPartition:
    job = await resolve_job(c, job_text)
    if job.request_id is None:
        raise NotFound(f"job {job.id[:12]} has no tasks that ran")
    request = await c.scheduler.get_request(job.request_id)
    names = [t.name for t in request.tasks]
    for candidate in request.tasks:
        if candidate.name == task:
            for part in candidate.partitions:
                if part.index == chunk:
                    return part
            raise NotFound(f"task {task} of job {job.id[:12]} has chunks 1 to {len(candidate.partitions)}, not {chunk}")
    raise NotFound(f"job {job.id[:12]} has no task {task!r} (it has {', '.join(names) or 'none'})")


def broke(regression: dict[str, str] | None, job_id: str) -> str:
    """Which push broke a failed test that passed before, said after its verdict."""
    if not regression:
        return ""
    if regression.get("jobId") == job_id:
        return ", new in this push"
    return f", since job {(regression.get('jobId') or regression['partitionId'])[:12]}"


def register(app: typer.Typer) -> None:
    @app.command()
    def push(
        repository: Path = typer.Argument(..., help="a local git or Mercurial repository"),
        revision: str = typer.Argument("HEAD"),
        branch: str | None = typer.Option(None),
        wait: bool = typer.Option(True, help="follow the job until it ends (exit code 3 if it did not pass)"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Test a revision: the job master makes a job of it and runs its tasks."""
        cfg = load(config)
        path = str(repository.resolve())

        async def main() -> int:
            c = clients(cfg)
            job = await c.jobmaster.push(PushSubmission(repository=path, revision=revision, branch=branch))
            console.print(f"job [bold]{job.id}[/] for {job.project}@{job.revision[:12]}: {job.state}")
            if not wait:
                return 0
            job, request = await watch_job(c, job.id, console)
            if request is not None:
                await show_failures(c, request, console)
            return 0 if job.state == "completed" else JOB_DID_NOT_PASS

        raise typer.Exit(run(main))

    @app.command()
    def status(
        job: str = typer.Argument(..., help="a job id or a prefix of one, or a revision (prefix)"),
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Show a job, its tasks and partitions (with their ids and chunk numbers)."""
        cfg = load(config)

        async def main() -> None:
            c = clients(cfg)
            found = await resolve_job(c, job)
            request = await c.scheduler.get_request(found.request_id) if found.request_id else None
            if as_json:
                print_json({"job": found.wire(), "request": request.wire() if request else None})
            else:
                console.print(job_table(found, request))

        run(main)

    @app.command()
    def jobs(
        project: str | None = typer.Option(None, help="only this project's"),
        state: str | None = typer.Option(None, help="only jobs in this state (completed, failed, running, …)"),
        limit: int = typer.Option(20, min=1, max=100_000, help="how many, newest first (pages are followed)"),
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """List jobs, newest first."""
        cfg = load(config)

        async def main() -> None:
            params: dict[str, object] = {"limit": min(limit, 1000)}
            if project:
                params["project"] = project
            if state:
                params["state"] = state
            found = [Job.model_validate(j) for j in await clients(cfg).jobmaster.every("/api/v1/jobs", params, limit)]
            if as_json:
                print_json([j.wire() for j in found])
                return
            table = Table("job", "project", "revision", "state", "created", "message", title_justify="left")
            for j in found:
                table.add_row(
                    j.id[:12],
                    j.project,
                    j.revision[:12],
                    styled(j.state),
                    f"{j.created_at:%Y-%m-%d %H:%M}",
                    (j.message or "")[:80],
                )
            console.print(table)

        run(main)

    @app.command()
    def logs(
        target: str = typer.Argument(..., help="a partition id (or a prefix), or a job (with TASK and CHUNK)"),
        task: str | None = typer.Argument(None, help="with a job: the task's name"),
        chunk: int | None = typer.Argument(None, help="with a job and a task: the partition's number, 1 to N"),
        run_number: int | None = typer.Option(None, "--run", help="which run (default: the latest)"),
        follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the run ends"),
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """Print the log of a partition's run: `infrax logs PARTITION` or `infrax logs JOB TASK CHUNK`."""
        cfg = load(config)
        if (task is None) != (chunk is None):
            raise typer.BadParameter("give both TASK and CHUNK after a job, or a partition id alone")

        async def main() -> None:
            c = clients(cfg)
            if task is not None and chunk is not None:
                partition = await partition_of_job(c, target, task, chunk)
            else:
                partition = await resolve_partition(c, target)
            run_id = run_id_of(partition.id, partition.run if run_number is None else run_number)
            offset, whole = 0, []
            while True:
                text, offset, complete = await c.executioner.log(run_id, offset)
                if as_json:
                    whole.append(text)
                else:
                    sys.stdout.write(text)
                    sys.stdout.flush()
                if complete or not follow:
                    break
                await asyncio.sleep(0.5)
            if as_json:
                print_json({"partitionId": partition.id, "runId": run_id, "complete": complete, "log": "".join(whole)})

        run(main)

    @app.command()
    def tests(
        job: str = typer.Argument(..., help="a job id or a prefix of one, or a revision"),
        task: str | None = typer.Option(None, help="only this task's"),
        failed: bool = typer.Option(
            False, "--failed", help="only tests that failed on some run (failed, intermittent)"
        ),
        limit: int = typer.Option(1000, min=1, max=1_000_000, help="how many at most"),
        as_json: bool = JsonOption,
        config: Path | None = ConfigOption,
    ) -> None:
        """The job's tests, each with its verdict over every run of its partition (a test that failed
        and then passed when run again is intermittent), from the JUnit reports its runs left. A
        failed test that passed before says which push broke it: this one, or an earlier job."""
        cfg = load(config)

        async def main() -> None:
            c = clients(cfg)
            found = await resolve_job(c, job)
            request = await c.scheduler.get_request(found.request_id) if found.request_id else None
            chunks = {p.id: (t.name, p.index) for t in (request.tasks if request else []) for p in t.partitions}
            params: dict[str, object] = {"jobId": found.id, "limit": min(limit, 1000)}
            if task is not None:
                matching = [t.id for t in (request.tasks if request else []) if t.name == task]
                if not matching:
                    raise NotFound(f"job {found.id[:12]} has no task {task!r}")
                params = {**params, "taskId": matching[0]}
            verdicts = await c.executioner.every("/api/v1/test-verdicts", params, limit)
            if failed:
                verdicts = [v for v in verdicts if v["verdict"] in ("failed", "intermittent")]
            if as_json:
                print_json(verdicts)
                return
            table = Table("test", "verdict", "runs", "task/chunk", "seconds", "message", title_justify="left")
            for v in verdicts:
                name, number = chunks.get(v["partitionId"], (v["taskName"], 0))
                runs = v["runs"]
                said = next((r["message"] for r in reversed(runs) if r["message"]), "")
                table.add_row(
                    v["testId"],
                    styled(v["verdict"]) + broke(v.get("regression"), found.id),
                    ", ".join(f"{r['run']}: {r['outcome']}" for r in runs),
                    f"{name}/{number}",
                    f"{runs[-1]['duration']:.2f}",
                    said[:80],
                )
            console.print(table)
            tally = {
                o: sum(v["verdict"] == o for v in verdicts) for o in ("passed", "failed", "intermittent", "skipped")
            }
            console.print(", ".join(f"{n} {o}" for o, n in tally.items() if n) or "no test results")

        run(main)

    @app.command()
    def cancel(
        job: str = typer.Argument(..., help="a job id or a prefix of one, or a revision"),
        reason: str | None = typer.Option(None, "--reason", max=500, help="why: the job's and its partitions' message"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Cancel a job: queued partitions never start, running ones are stopped."""
        cfg = load(config)

        async def main() -> None:
            c = clients(cfg)
            cancelled = await c.jobmaster.cancel((await resolve_job(c, job)).id, reason)
            console.print(f"job {cancelled.id}: {cancelled.state}")

        run(main)

    @app.command()
    def rerun(
        job: str = typer.Argument(..., help="a job id or a prefix of one, or a revision"),
        failed: bool = typer.Option(False, "--failed", help="only its failed partitions, each as its next run"),
        config: Path | None = ConfigOption,
    ) -> None:
        """Run an ended job again, all of it (a new task request of the same job) or its failed
        partitions (`--failed`); follow it with `infrax status`."""
        cfg = load(config)

        async def main() -> None:
            c = clients(cfg)
            again = await c.jobmaster.rerun((await resolve_job(c, job)).id, failed=failed)
            console.print(f"job [bold]{again.id}[/] runs again{' (its failed partitions)' if failed else ''}")

        run(main)
