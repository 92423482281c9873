"""Ids as people type them: a unique prefix of 6 characters or more names a job or a partition."""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, and_

MIN_PREFIX = 6
ID_PREFIX = re.compile(r"^[0-9a-f]{6,64}$")  # every infrax id is hex (`infrax.model.new_id`)


class NotAnIdPrefix(ValueError):
    pass


def check_prefix(prefix: str) -> str:
    prefix = prefix.strip().lower()
    if not ID_PREFIX.match(prefix):
        raise NotAnIdPrefix(f"{prefix[:70]!r} is not an id prefix: {MIN_PREFIX} to 64 hex digits")
    return prefix


def prefix_clause(column: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    """Ids that start with `prefix`: a range the primary key's index answers (hex digits sort the
    same in every collation), and `LIKE` to be exact whatever the collation."""
    prefix = check_prefix(prefix)
    following = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return and_(column >= prefix, column < following, column.startswith(prefix, autoescape=True))
