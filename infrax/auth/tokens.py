"""Bearer tokens: made once and shown once, stored as a hash, checked on every request.

A token reads `ifx_<id>_<secret>`: the id finds its row, the hash of the whole token must match
(compared in constant time), and it must be neither revoked nor expired. Checked tokens are kept
in memory for `cache_seconds` (10 s by default): revoking one takes effect within that time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from infrax.auth.runs import PREFIX as RUN_PREFIX
from infrax.auth.runs import RunTokens
from infrax.auth.scopes import satisfied, valid
from infrax.model import utcnow
from infrax.store import Database, aware
from infrax.store.tables import auth_tokens

PREFIX = "ifx_"
_CACHE_SIZE = 10_000


class TokenError(ValueError):
    """A token cannot be made as asked (a scope that is not one, say)."""


@dataclass(frozen=True)
class Caller:
    """Who made a request: the token's id and name, and what it may do."""

    token_id: str
    name: str
    scopes: tuple[str, ...]

    def may(self, scope: str) -> bool:
        return satisfied(self.scopes, scope)


@dataclass(frozen=True)
class TokenInfo:
    id: str
    name: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "scopes": self.scopes,
            "createdAt": self.created_at.isoformat(),
            "expiresAt": self.expires_at.isoformat() if self.expires_at else None,
            "revokedAt": self.revoked_at.isoformat() if self.revoked_at else None,
        }


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenStore:
    def __init__(self, db: Database, run_tokens: RunTokens | None = None, *, cache_seconds: float = 10.0) -> None:
        self.db = db
        self.run_tokens = run_tokens
        self.cache_seconds = cache_seconds
        self._checked: OrderedDict[str, tuple[Caller | None, float]] = OrderedDict()

    async def create(self, name: str, scopes: list[str], expires_in: float | None = None) -> tuple[str, str]:
        """A new token; returns (its id, the token), the token itself never to be seen again."""
        bad = [s for s in scopes if not valid(s)]
        if bad:
            raise TokenError(f"not a scope: {', '.join(map(repr, bad))}")
        if not name or len(name) > 200:
            raise TokenError("a token's name is 1 to 200 characters")
        token_id = secrets.token_hex(8)
        token = f"{PREFIX}{token_id}_{secrets.token_urlsafe(32)}"
        now = utcnow()
        async with self.db.begin() as conn:
            await conn.execute(
                insert(auth_tokens).values(
                    id=token_id,
                    name=name,
                    token_hash=hash_token(token),
                    scopes=list(scopes),
                    created_at=now,
                    expires_at=now + timedelta(seconds=expires_in) if expires_in is not None else None,
                )
            )
        return token_id, token

    async def check(self, token: str) -> Caller | None:
        """The caller a token stands for; None when it is not a valid, current token."""
        if token.startswith(RUN_PREFIX):
            claims = self.run_tokens.check(token) if self.run_tokens is not None else None
            if claims is None:
                return None
            return Caller(token_id=f"run:{claims.run_id}", name=f"run {claims.run_id}", scopes=claims.scopes())
        now = time.monotonic()
        cached = self._checked.get(token)
        if cached is not None and cached[1] > now:
            return cached[0]
        caller = await self._look_up(token)
        self._checked[token] = (caller, now + self.cache_seconds)
        self._checked.move_to_end(token)
        while len(self._checked) > _CACHE_SIZE:
            self._checked.popitem(last=False)
        return caller

    async def _look_up(self, token: str) -> Caller | None:
        if not token.startswith(PREFIX) or len(token) > 200:
            return None
        token_id = token[len(PREFIX) :].split("_", 1)[0]
        async with self.db.begin() as conn:
            row = (await conn.execute(select(auth_tokens).where(auth_tokens.c.id == token_id))).mappings().first()
        if row is None or not hmac.compare_digest(row["token_hash"], hash_token(token)):
            return None
        if row["revoked_at"] is not None:
            return None
        expires = aware(row["expires_at"])
        if expires is not None and expires <= utcnow():
            return None
        return Caller(token_id=row["id"], name=row["name"], scopes=tuple(row["scopes"]))

    async def revoke(self, token_id: str) -> bool:
        async with self.db.begin() as conn:
            result = await conn.execute(
                update(auth_tokens)
                .where(auth_tokens.c.id == token_id, auth_tokens.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
        self._checked.clear()  # this process at once; others within their cache time
        return bool(result.rowcount)

    async def list_tokens(self, include_revoked: bool = False) -> list[TokenInfo]:
        query = select(auth_tokens).order_by(auth_tokens.c.created_at)
        if not include_revoked:
            query = query.where(auth_tokens.c.revoked_at.is_(None))
        async with self.db.begin() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            TokenInfo(
                id=r["id"],
                name=r["name"],
                scopes=list(r["scopes"]),
                created_at=aware(r["created_at"]),
                expires_at=aware(r["expires_at"]),
                revoked_at=aware(r["revoked_at"]),
            )
            for r in rows
        ]
