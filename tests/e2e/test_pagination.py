"""Every list is paged by a keyset cursor: each item exactly once, while items are added."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import insert, select

from infrax.model import utcnow
from infrax.pagination import PageRequest, decode_cursor, encode_cursor, keyset, split, time_and_id
from infrax.scheduler.client import SchedulerClient
from infrax.store import Database, aware
from infrax.store.tables import jobs
from tests.jobmaster.conftest import wait_for


async def test_partitions_are_listed_once_each_while_requests_are_added(start_stack: Any) -> None:
    infrax = await start_stack()
    scheduler = infrax["scheduler"]
    # They run while they are listed: a state changes, never a partition's place in the order.
    task = {"name": "t", "containerTag": ["linux"], "bootstrapper": "/bin/true"}
    first = await infrax.submit([{**task, "files": [f"f{i}" for i in range(130)], "partitions": 130}])

    async def planned() -> int:
        return sum((await scheduler.get("/api/v1/partition-counts")).json().values())

    await wait_for(lambda: _equals(planned, 130), 30, "the 130 partitions to be planned")
    existing = 130
    seen: list[str] = []
    url: str | None = "/api/v1/partitions?limit=40"
    pages = 0
    while url is not None:
        response = await scheduler.get(url)
        assert response.status_code == 200, response.text
        seen += [p["id"] for p in response.json()]
        pages += 1
        if pages == 2:  # more work arrives while the list is being read
            await infrax.submit([{**task, "files": ["late-1", "late-2"], "partitions": 2}])
        url = response.links.get("next", {}).get("url")
    assert len(seen) == len(set(seen)), "an item came twice"
    assert len(seen) >= existing and pages >= 4  # 130 and 2 more, 40 a page
    # The late two are listed if they were planned before the last page was read, else not; nothing
    # else can be in the list, and nothing present at the start is missing from it.
    await wait_for(lambda: _equals(planned, existing + 2), 30, "the late request to be planned")
    everything = {p["id"] for p in (await scheduler.get("/api/v1/partitions?limit=1000")).json()}
    assert set(seen) <= everything and len(seen) in (existing, existing + 2)
    # The components' own client follows the pages: 130 partitions in two pages of 100.
    every = await SchedulerClient(scheduler).partitions(first["id"])
    assert len({p.id for p in every}) == len(every) == 130 and {p.id for p in every} <= set(seen)
    assert (await scheduler.get("/api/v1/partitions?after=not-a-cursor!")).status_code == 422
    assert (await scheduler.get(f"/api/v1/partitions?after={encode_cursor(['x', 'y'])}")).status_code == 400
    assert (await scheduler.get("/api/v1/partitions?limit=1001")).status_code == 422


async def _equals(count: Any, expected: int) -> bool:
    return bool(await count() == expected)


async def test_newest_first_pages_break_ties_by_id_and_take_each_row_once(database: Database) -> None:
    await database.create_schema()
    now = utcnow()
    rows = [
        {
            "id": f"{i:032x}",
            "project": "p",
            "revision": f"{i:040x}",
            "repository": "r",
            "source": "cli",
            "state": "pending",
            "created_at": now - timedelta(seconds=i // 3),  # three jobs share each second
            "updated_at": now,
        }
        for i in range(25)
    ]
    async with database.begin() as conn:
        await conn.execute(insert(jobs), rows)
    page, seen = PageRequest(4, None), []
    while True:
        query = keyset(select(jobs.c.id, jobs.c.created_at), page, [jobs.c.created_at, jobs.c.id], True, time_and_id)
        async with database.begin() as conn:
            found = (await conn.execute(query)).mappings().all()
        items, after = split(found, page, lambda r: (aware(r["created_at"]), r["id"]))
        seen += [r["id"] for r in items]
        if after is None:
            break
        page = PageRequest(4, decode_cursor(encode_cursor(after)))
    expected = [r["id"] for r in sorted(rows, key=lambda r: (r["created_at"], r["id"]), reverse=True)]
    assert seen == expected
