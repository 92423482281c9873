"""Mercurial pushes, each recorded once and run as one job for its tip.

Plain Mercurial keeps no pushlog (hg.mozilla.org's is an extension), so the job master keeps
its own, in the shape of `json-pushes?version=2&full=1`: push ids 1, 2, ... per repository,
each with its changesets (tip last), its user and its date. Pushes come in two ways:

- a `changegroup` hook in the repository posts `{repository, node, nodeLast, user, date}` to
  `POST /api/v1/hg/pushes` (`infrax/jobmaster/hg_hook.py` does it);
- the repositories in `hg_poll` are polled every `hg_poll_interval` seconds for heads no
  recorded push reaches.

Both go through `_record`, one repository at a time: a push is new only if its tip is not an
ancestor of a recorded push's tip (or of the baseline, the heads the job master found when it
first saw the repository), so the hook and the poller never make two jobs of one push, in
whichever order they see it. Its changesets are `only(tip, <earlier tips and baseline>)`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field
from sqlalchemy import delete, func, select, update

from infrax.jobmaster import hg
from infrax.jobmaster.checkout import Checkout, Origin
from infrax.jobmaster.plugin import PushRejected
from infrax.jobmaster.policy import RepositoryRefused
from infrax.jobmaster.records import insert_once
from infrax.jobmaster.vcs import Source
from infrax.model import NO_CONTROL, WireModel, utcnow
from infrax.store.tables import hg_pushes, hg_repositories
from infrax.treeherder import pushes

if TYPE_CHECKING:
    from infrax.jobmaster.service import JobMaster
    from infrax.model import Job

log = logging.getLogger(__name__)

NODE = r"^[0-9a-f]{40}$"
KNOWN_TIPS = 200  # recent push tips a new push is measured against


class HgPushNotice(WireModel):
    """Body of `POST /api/v1/hg/pushes`: what a changegroup hook knows of the push."""

    repository: str = Field(
        min_length=1, max_length=1000, pattern=NO_CONTROL, description="the repository's path or URL"
    )
    node: str = Field(pattern=NODE, description="HG_NODE: the first changeset the push added")
    node_last: str | None = Field(default=None, pattern=NODE, description="HG_NODE_LAST: the last one")
    user: str | None = Field(default=None, max_length=200, pattern=NO_CONTROL)
    date: int | None = Field(default=None, ge=0, le=2**40, description="seconds since the epoch")
    source: str | None = Field(
        default=None, max_length=50, pattern=NO_CONTROL, description="HG_SOURCE: push, serve, pull..."
    )


class PushRaced(PushRejected):
    """Two job masters recorded a push of one repository at once: the other one runs it."""


def repository_key(repository: str) -> str:
    """One name per repository: a local path made absolute, a URL without its trailing slash."""
    if "://" in repository:
        return repository.rstrip("/")
    return str(Path(repository).resolve())


class HgPushes:
    def __init__(self, jobmaster: JobMaster, poll: list[str], interval: float) -> None:
        self.jobmaster = jobmaster
        self.poll = list(poll)
        self.interval = interval
        self._locks: dict[str, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self._seen: dict[str, tuple[int, int] | None] = {}  # changelog size and time at the last poll

    def start(self) -> None:
        if self.poll and self._task is None:
            self._task = asyncio.create_task(self._poll_loop(), name="jobmaster-hg-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _poll_loop(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:
                log.exception("polling hg repositories failed")
            await asyncio.sleep(self.interval)

    async def poll_once(self) -> list[dict[str, Any]]:
        """Poll every configured repository once; the pushes it found (each with its job)."""
        found = []
        for repository in self.poll:
            try:
                found += await self.poll_repository(repository)
            except (hg.HgError, PushRejected, OSError, ValueError) as error:
                log.warning("polling %s: %s", repository, error)
        return found

    async def poll_repository(self, repository: str) -> list[dict[str, Any]]:
        key = repository_key(repository)
        path = await self._local(key)
        pushes = []
        async with self._locks.setdefault(key, asyncio.Lock()):
            seen = _fingerprint(path)
            if seen is not None and self._seen.get(key) == seen:
                return []  # nothing was added since the last poll: no need to ask hg
            known = await self._known(key)
            heads = await hg.nodes(path, "heads(all())")
            if known is None:  # first sight: what is there already is history, not a push
                await self._set_baseline(key, heads)
                self._seen[key] = seen
                return []
            if not heads:
                return []
            covered = set(await hg.nodes(path, f"({'+'.join(heads)}) and ::({'+'.join(known)})")) if known else set()
            for tip in heads:
                if tip not in covered:
                    user = await hg.author_email(path, tip) or "unknown"
                    pushes.append(await self._record(key, path, tip, known, user, int(time.time()), "poll"))
                    known.append(tip)
            self._seen[key] = seen
        return pushes

    async def notify(self, notice: HgPushNotice) -> tuple[dict[str, Any], bool]:
        """Record the push a hook reports (unless recorded already) and start its job."""
        try:
            self.jobmaster.settings.repositories.check(notice.repository)
            key = repository_key(notice.repository)
            path = await self._local(key)
        except RepositoryRefused as error:
            raise PushRejected(str(error)) from error
        except (OSError, ValueError) as error:  # a name too long, a folder it may not read
            raise PushRejected(
                f"repository {notice.repository[:200]!r}: {getattr(error, 'strerror', None) or error}"
            ) from error
        tip = notice.node_last or notice.node
        async with self._locks.setdefault(key, asyncio.Lock()):
            try:
                await hg.nodes(path, f"{notice.node}+{tip}")
            except hg.HgError as error:
                raise PushRejected(f"hg push of {key}: {error}") from error
            known = await self._known(key)
            if known is None:  # first sight: the baseline is what the repository had before this push
                known = await hg.nodes(path, f"parents(roots({notice.node}::{tip})) - ({notice.node}::{tip})")
                await self._set_baseline(key, known)
            elif known and await hg.nodes(path, f"{tip} and ::({'+'.join(known)})"):
                return await self._containing(key, tip), False
            user = notice.user or "unknown"
            return await self._record(key, path, tip, known, user, notice.date or int(time.time()), "hook"), True

    async def push_revision(
        self, repository: str, revision: str, authorize: Callable[[str], None] | None
    ) -> tuple[Job, bool]:
        """`infrax push` of a local repository's changeset: a push of the pushlog, as a hook's
        would be, so Treeherder (which files jobs under the pushes it reads there) shows it. A
        changeset a recorded push ends with is that push again; one the pushlog has only as history
        (or inside a push) is a push of its own of that one changeset."""
        key = repository_key(repository)
        path = await self._local(key)
        async with self._locks.setdefault(key, asyncio.Lock()):
            known = await self._known(key)
            if known is None:  # first sight: what came before the changeset is history
                known = await hg.nodes(path, f"parents({revision})")
                await self._set_baseline(key, known)
            revset = None
            if known and await hg.nodes(path, f"{revision} and ::({'+'.join(known)})"):
                recorded = await self._containing(key, revision)
                if recorded["push_id"] is not None and recorded["tip"] == revision:
                    checkout = self._checkout(key, path, recorded)
                    return await self.jobmaster.start_job(checkout, authorize)
                revset = revision
            user = "infrax push"
            row = await self._record(key, path, revision, known, user, int(time.time()), "cli", revset, authorize)
        job = await self.jobmaster.get(row["job_id"]) if row["job_id"] else None
        if job is None:
            raise PushRejected(row["message"] or f"push {row['push_id']} of {key} started no job")
        return job, True

    def _checkout(self, key: str, path: str, push: dict[str, Any]) -> Checkout:
        """The recorded push as a job's checkout: its tip, the files of all its changesets, and
        its announcement for Treeherder."""
        changesets = push["changesets"]
        files = sorted({f for c in changesets for f in c["files"]})
        info = {"pushId": push["push_id"], "user": push["pusher"], "date": push["date"]}
        origin = Origin("hg", key, f"push/{push['push_id']}", None, info)
        announce = pushes.hg_push(self.jobmaster.public_url, key, push)
        branch = changesets[-1]["branch"] if changesets else None
        trigger = "cli" if push.get("source") == "cli" else "hg"
        return Checkout(Source("hg", path), key, push["tip"], branch, files, trigger, origin, announcements=(announce,))

    async def _local(self, key: str) -> str:
        if "://" not in key and not hg.is_hg(key):
            raise PushRejected(f"{key} is not a Mercurial repository")
        return await self.jobmaster.mirrors.hg(key)

    async def _known(self, key: str) -> list[str] | None:
        """Baseline heads and recent push tips; None for a repository never seen."""
        async with self.jobmaster.db.begin() as conn:
            baseline = (
                await conn.execute(select(hg_repositories.c.baseline).where(hg_repositories.c.repository == key))
            ).scalar()
            tips = (
                (
                    await conn.execute(
                        select(hg_pushes.c.tip)
                        .where(hg_pushes.c.repository == key)
                        .order_by(hg_pushes.c.push_id.desc())
                        .limit(KNOWN_TIPS)
                    )
                )
                .scalars()
                .all()
            )
        if baseline is None and not tips:
            return None
        return [*(baseline or []), *tips]

    async def _set_baseline(self, key: str, heads: list[str]) -> None:
        await insert_once(
            self.jobmaster.db, hg_repositories, {"repository": key, "baseline": heads, "created_at": utcnow()}
        )

    async def _record(
        self,
        key: str,
        path: str,
        tip: str,
        known: list[str],
        user: str,
        date: int,
        source: str,
        revset: str | None = None,
        authorize: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        if revset is None:
            revset = f"only({tip}, {'+'.join(known)})" if known else f"::{tip}"
        changesets = await hg.changesets(path, revset)
        async with self.jobmaster.db.begin() as conn:
            push_id = (
                (
                    await conn.execute(select(func.max(hg_pushes.c.push_id)).where(hg_pushes.c.repository == key))
                ).scalar()
                or 0
            ) + 1
        row = {
            "repository": key,
            "push_id": push_id,
            "tip": tip,
            "changesets": changesets,
            "pusher": user,
            "date": date,
            "source": source,
            "created_at": utcnow(),
        }
        if not await insert_once(self.jobmaster.db, hg_pushes, row):
            # Another job master recorded this push (or another one under this id) just now.
            raise PushRaced(f"push {push_id} of {key} was recorded elsewhere at the same time; it is not repeated")
        try:
            job, _ = await self.jobmaster.start_job(self._checkout(key, path, row), authorize)
        except PushRejected as error:
            await self._update(key, push_id, message=str(error))
            return {**row, "job_id": None, "message": str(error)}
        except BaseException:
            # Not started for a passing reason (the scheduler away): forget the push, so the
            # next poll or a repeated hook records it again.
            await self._forget(key, push_id)
            raise
        await self._update(key, push_id, job_id=job.id)
        return {**row, "job_id": job.id, "message": None}

    async def _update(self, key: str, push_id: int, **values: Any) -> None:
        async with self.jobmaster.db.begin() as conn:
            await conn.execute(
                update(hg_pushes).where(hg_pushes.c.repository == key, hg_pushes.c.push_id == push_id).values(**values)
            )

    async def _forget(self, key: str, push_id: int) -> None:
        async with self.jobmaster.db.begin() as conn:
            await conn.execute(delete(hg_pushes).where(hg_pushes.c.repository == key, hg_pushes.c.push_id == push_id))

    async def _containing(self, key: str, node: str) -> dict[str, Any]:
        """The recorded push that has `node` (or, for history before infrax, none)."""
        async with self.jobmaster.db.begin() as conn:
            rows = (
                (
                    await conn.execute(
                        select(hg_pushes)
                        .where(hg_pushes.c.repository == key)
                        .order_by(hg_pushes.c.push_id.desc())
                        .limit(KNOWN_TIPS)
                    )
                )
                .mappings()
                .all()
            )
        for row in rows:
            if any(c["node"] == node for c in row["changesets"]):
                return dict(row)
        return {
            "repository": key,
            "push_id": None,
            "tip": node,
            "changesets": [],
            "job_id": None,
            "message": "in the repository before the job master watched it",
        }

    async def repository_named(self, name: str) -> str | None:
        """The one recorded repository whose last path segment is `name` (`try` for
        https://hg.example.org/try or /srv/hg/try): how `<public URL>/hg/<name>/json-pushes/`,
        the address Treeherder builds from a repository URL, finds it. None for none, or two."""
        async with self.jobmaster.db.begin() as conn:
            keys = (await conn.execute(select(hg_repositories.c.repository))).scalars().all()
        named = [k for k in keys if k.rstrip("/").rsplit("/", 1)[-1] == name]
        return named[0] if len(named) == 1 else None

    async def json_pushes(
        self,
        repository: str,
        start_id: int | None = None,
        end_id: int | None = None,
        full: bool = False,
        changeset: str | None = None,
    ) -> dict[str, Any]:
        """The recorded pushes as `json-pushes?version=2` answers: startID exclusive, endID
        inclusive; with `changeset`, the push that holds it (a full id or a prefix of 12 or more)."""
        key = repository_key(repository)
        query = select(hg_pushes).where(hg_pushes.c.repository == key).order_by(hg_pushes.c.push_id)
        if start_id is not None:
            query = query.where(hg_pushes.c.push_id > start_id)
        if end_id is not None:
            query = query.where(hg_pushes.c.push_id <= end_id)
        async with self.jobmaster.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
            if changeset is not None:
                rows = [r for r in rows if any(c["node"].startswith(changeset) for c in r["changesets"])][:1]
            last = (
                await conn.execute(select(func.max(hg_pushes.c.push_id)).where(hg_pushes.c.repository == key))
            ).scalar()
        return {
            "lastpushid": last or 0,
            "pushes": {
                str(r["push_id"]): {
                    "changesets": r["changesets"] if full else [c["node"] for c in r["changesets"]],
                    "date": r["date"],
                    "user": r["pusher"],
                }
                for r in rows
            },
        }


def _fingerprint(path: str) -> tuple[int, int] | None:
    """Size and modification time of the changelog, which every new changeset appends to."""
    try:
        stat = (Path(path) / ".hg" / "store" / "00changelog.i").stat()
    except OSError:
        return None
    return stat.st_size, stat.st_mtime_ns


def push_view(row: dict[str, Any]) -> dict[str, Any]:
    """A recorded push as the REST API shows it."""
    return {
        "repository": row["repository"],
        "pushId": row["push_id"],
        "tip": row["tip"],
        "changesets": [c["node"] for c in row["changesets"]],
        "user": row.get("pusher"),
        "date": row.get("date"),
        "jobId": row.get("job_id"),
        "message": row.get("message"),
    }
