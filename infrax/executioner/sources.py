"""A run's source: what its container's cache lacks of its job's revision, from the job master to
the agent, so that a container needs no route to the code host nor credentials for it.

The agent names the revisions its cache holds; the job master answers with what the revision
needs besides them (nothing, on a warm container that had it); the answer is spooled to a file
(its size must be known to stage it) and staged with the run as `.infrax-source`. The run message
then says what to check out (`checkout` in the agent protocol).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

from infrax.agent.checkout import SOURCE_NAME
from infrax.agent.client import AgentClient
from infrax.http import ServiceError
from infrax.model import PartitionOffer
from infrax.retry import outage, retry

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class SourceUnavailable(Exception):
    """The job master did not give the source within the outage deadline."""


async def stage_source(
    client: AgentClient,
    offer: PartitionOffer,
    jobmaster: httpx.AsyncClient | None,
    spool: Path,
    deadline: float,
    note: Callable[[str], object],
) -> dict[str, Any] | None:
    """The run message's `checkout`, its source staged on the agent; None when the run has none."""
    if offer.checkout is None or offer.job_id is None:
        return None
    if jobmaster is None:
        note("no checkout: this executioner has no job master to get the source from")
        return None
    # A cache per project and trust: a pull request's run, which may tamper with what its container
    # keeps, never fills the cache a trusted push's run checks out from (Taskcluster's cache levels).
    depth = offer.checkout.depth
    # A shallow cache apart from the full one: their histories must not mix.
    key = f"{'t' if offer.trusted else 'u'}-{offer.project}" + (f"-d{depth}" if depth else "")
    state = await client.source_state(key)
    for vcs, revisions in state.items():
        if offer.revision in revisions:  # the warm case: nothing to ask the job master for
            note(f"its cache had the revision ({len(revisions)} revisions cached)")
            return _checkout(vcs, key, offer.revision, offer)
    have = state["git"] + state["hg"]
    await asyncio.to_thread(spool.mkdir, parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=spool, prefix="source-") as file:

        async def fetch() -> httpx.Response:
            file.seek(0)
            file.truncate()
            async with jobmaster.stream(
                "GET",
                f"/api/v1/jobs/{offer.job_id}/source",
                # The run's own token: it reads its own job's source, whatever the offer says.
                headers={"Authorization": f"Bearer {offer.run_token}"} if offer.run_token else None,
                params=[*(("have", h) for h in have), *((("depth", str(depth)),) if depth else ())],
            ) as answer:
                if answer.status_code >= 500 or answer.status_code == 429:
                    raise ServiceError("jobmaster", answer.status_code, (await answer.aread())[:200].decode())
                if answer.status_code == 200:
                    async for chunk in answer.aiter_bytes(CHUNK):
                        await asyncio.to_thread(file.write, chunk)
                    await asyncio.to_thread(file.flush)
                return answer

        try:
            answer = await retry(
                fetch,
                on=(httpx.TransportError, ServiceError),
                deadline=deadline,
                maximum=2.0,
                during=outage("the job master"),
            )
        except (httpx.TransportError, ServiceError) as error:
            raise SourceUnavailable(f"the job master did not give the source of job {offer.job_id}: {error}") from error
        if answer.status_code == 404:
            note(f"no checkout: the job master has no job {offer.job_id}")
            return None
        if answer.status_code not in (200, 204):
            raise SourceUnavailable(
                f"the job master answered {answer.status_code} for the source of job {offer.job_id}"
            )
        if answer.status_code == 200:
            size = file.tell()
            await client.stage(offer.run_id, SOURCE_NAME, size, _chunks(file.name))
            note(f"sent {size:,} bytes of source its cache lacked ({len(have)} revisions cached)")
        else:
            note(f"its cache had the revision ({len(have)} revisions cached)")
    checkout = _checkout(answer.headers["x-infrax-vcs"], key, answer.headers["x-infrax-revision"], offer)
    shallow = answer.headers.get("x-infrax-shallow", "").split()
    return {**checkout, "shallow": shallow} if shallow else checkout


def _checkout(vcs: str, key: str, revision: str, offer: PartitionOffer) -> dict[str, Any]:
    assert offer.checkout is not None
    sparse = {"sparse": offer.checkout.sparse} if offer.checkout.sparse else {}
    return {"vcs": vcs, "key": key, "revision": revision, **sparse}


async def _chunks(path: str) -> AsyncIterator[bytes]:
    with await asyncio.to_thread(open, path, "rb") as file:
        while chunk := await asyncio.to_thread(file.read, CHUNK):
            yield chunk
