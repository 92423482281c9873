"""What the job master answers about jobs: one, a page of them, where they came from, and the
files and source of a job's revision."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from infrax.ids import prefix_clause
from infrax.jobmaster import git, hg
from infrax.jobmaster.sources import Pack, pack
from infrax.jobmaster.vcs import Source, VcsError
from infrax.model import Job, JobTask
from infrax.pagination import DEFAULT_LIMIT, PageRequest, keyset, split, time_and_id
from infrax.store import Database, aware
from infrax.store.tables import job_origins, job_tasks, jobs


class JobNotFound(Exception):
    pass


class JobQueries:
    db: Database
    public_url: str
    dashboard_url: str | None

    async def _find(self, project: str, revision: str) -> Job | None:
        async with self.db.begin() as conn:
            job_id = (
                await conn.execute(select(jobs.c.id).where(jobs.c.project == project, jobs.c.revision == revision))
            ).scalar()
        return None if job_id is None else await self.get(job_id)

    def job_page(self, job_id: str) -> str:
        if self.dashboard_url:
            return f"{self.dashboard_url.rstrip('/')}/jobs/{job_id}"
        return f"{self.public_url}/api/v1/jobs/{job_id}"

    async def get(self, job_id: str) -> Job:
        async with self.db.begin() as conn:
            row = (await conn.execute(select(jobs).where(jobs.c.id == job_id))).mappings().first()
            if row is None:
                raise JobNotFound(f"no job {job_id}")
            task_rows = (await conn.execute(select(job_tasks).where(job_tasks.c.job_id == job_id))).mappings().all()
        return job_of(
            row, [JobTask(id=t["task_id"], name=t["name"], state=t["state"], message=t["message"]) for t in task_rows]
        )

    async def list_jobs(
        self,
        project: str | None = None,
        revision: str | None = None,
        page: PageRequest | None = None,
        *,
        state: str | None = None,
        id_prefix: str | None = None,
    ) -> tuple[list[Job], list[Any] | None]:
        """Newest first, a page at a time; and the key the next page starts after."""
        page = page or PageRequest(DEFAULT_LIMIT, None)
        query = select(jobs)
        if project:
            query = query.where(jobs.c.project == project)
        if state:
            query = query.where(jobs.c.state == state)
        if id_prefix:
            query = query.where(prefix_clause(jobs.c.id, id_prefix))
        if revision:
            query = query.where(jobs.c.revision.startswith(revision))
        query = keyset(query, page, [jobs.c.created_at, jobs.c.id], descending=True, parse=time_and_id)
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        items, after = split(rows, page, lambda r: (aware(r["created_at"]), r["id"]))
        return [job_of(r, []) for r in items], after

    async def origins(self, job_id: str, host: str | None = None) -> list[dict[str, Any]]:
        query = select(job_origins).where(job_origins.c.job_id == job_id)
        if host:
            query = query.where(job_origins.c.host == host)
        async with self.db.begin() as conn:
            return [dict(r) for r in (await conn.execute(query.order_by(job_origins.c.created_at))).mappings().all()]

    async def file_at_revision(self, job_id: str, path: str) -> bytes | None:
        reader, revision = await self._source_of(job_id)
        return await reader.read_file(revision, path)

    async def source_pack(self, job_id: str, have: list[str], depth: int | None = None) -> Pack:
        """What a container's cache holding `have` lacks of the job's revision (infrax.jobmaster.sources)."""
        reader, revision = await self._source_of(job_id)
        try:
            return await pack(reader, revision, have, depth)
        except (git.GitError, hg.HgError) as error:
            raise VcsError(str(error)) from error

    async def _source_of(self, job_id: str) -> tuple[Source, str]:
        job = await self.get(job_id)
        async with self.db.begin() as conn:
            details = (await conn.execute(select(jobs.c.details).where(jobs.c.id == job_id))).scalar() or {}
        return Source(details.get("vcs", "git"), details.get("readFrom", job.repository)), job.revision


def job_of(row: Any, task_list: list[JobTask]) -> Job:
    details = dict(row["details"] or {})
    details.pop("tasks", None)
    return Job(
        id=row["id"],
        project=row["project"],
        revision=row["revision"],
        repository=row["repository"],
        source=row["source"],
        state=row["state"],
        request_id=row["request_id"],
        message=row["message"],
        details=details,
        created_at=aware(row["created_at"]),
        updated_at=aware(row["updated_at"]),
        tasks=task_list,
    )
