"""Keyset pagination for every list endpoint: a `limit` (default 100, at most 1,000), an opaque
`after` cursor, a stable order, and the next page's URL in a `Link: <…>; rel="next"` header
(as GitHub's API gives it), so a list's body stays the JSON array it always was.

A cursor holds the sort key of the last item of a page; the next page starts after that key.
Items added meanwhile are never returned twice and none present at the start is skipped.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from fastapi import HTTPException, Query, Request, Response
from sqlalchemy import ColumnElement, Select, literal, tuple_

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
T = TypeVar("T")


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: list[Any] | None


def page_request(
    limit: int = Query(DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description=f"items per page, at most {MAX_LIMIT}"),
    after: str | None = Query(
        None, max_length=500, pattern=r"^[A-Za-z0-9_-]+$", description="the cursor of the previous page's Link"
    ),
) -> PageRequest:
    """FastAPI dependency: the page asked for."""
    return PageRequest(limit, None if after is None else decode_cursor(after))


def encode_cursor(key: Sequence[Any]) -> str:
    data = json.dumps([v.isoformat() if hasattr(v, "isoformat") else v for v in key], separators=(",", ":"))
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        key = None
    if not isinstance(key, list) or not key or not all(isinstance(v, (str, int, float)) for v in key):
        raise HTTPException(400, "after: not a cursor this API gave (take it from a page's Link header)")
    return key


def keyset(
    query: Select[Any],
    page: PageRequest,
    columns: Sequence[ColumnElement[Any]],
    descending: bool = False,
    parse: Callable[[list[Any]], Sequence[Any]] = lambda key: key,
) -> Select[Any]:
    """`query` ordered by `columns` (all ascending or all descending), from after the cursor, one
    row more than the page (to know whether another page follows)."""
    if page.after is not None:
        if len(page.after) != len(columns):
            raise HTTPException(400, "after: not a cursor of this list")
        try:
            key = parse(page.after)
        except (TypeError, ValueError):
            raise HTTPException(400, "after: not a cursor of this list") from None
        bound = [literal(value, column.type) for value, column in zip(key, columns, strict=True)]
        row, cursor = (tuple_(*columns), tuple_(*bound)) if len(columns) > 1 else (columns[0], bound[0])
        query = query.where(row < cursor if descending else row > cursor)
    order = [c.desc() if descending else c.asc() for c in columns]
    return query.order_by(*order).limit(page.limit + 1)


def time_and_id(key: list[Any]) -> list[Any]:
    """A cursor's (created_at, id) key back in Python types: the parse of a newest-first list."""
    return [datetime.fromisoformat(str(key[0])), str(key[1])]


def split(rows: Sequence[T], page: PageRequest, key: Callable[[T], Sequence[Any]]) -> tuple[list[T], list[Any] | None]:
    """The page's rows, and the key the next page starts after (None on the last page)."""
    items = list(rows[: page.limit])
    return items, (list(key(items[-1])) if len(rows) > page.limit else None)


def link_next(request: Request, response: Response, page: PageRequest, next_key: Sequence[Any] | None) -> None:
    """When more follow, the next page's URL in the `Link` header: a reference relative to the
    host (RFC 8288 allows it), right behind a proxy whatever host name the proxy forwards."""
    if next_key is not None:
        url = request.url.include_query_params(after=encode_cursor(next_key), limit=page.limit)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
