"""Run tokens: what one run of one partition may do, signed by the scheduler, stored nowhere.

A run token names its run (run id, partition, run number, job) and when it expires, signed with
a key every component reads from the store. The scheduler makes one for each run it offers; the
executioner takes an assignment only with the token of that very run, and the run's agent fetches
its bootstrapper from the job master with it: the token grants `jobmaster:read-files:<its job>`,
nothing else, and only until the run's `maxRunTime` (plus a margin) has passed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select

from infrax.model import utcnow
from infrax.store import Conflict, Database
from infrax.store.tables import auth_keys

PREFIX = "ifr_"
KEY_NAME = "run-tokens"
MARGIN = 600.0  # seconds past maxRunTime: a run's last fetch and its news still count


@dataclass(frozen=True)
class RunClaims:
    run_id: str
    partition_id: str
    run: int
    job_id: str | None
    expires: float  # seconds since the epoch

    def scopes(self) -> tuple[str, ...]:
        return (f"jobmaster:read-files:{self.job_id}",) if self.job_id else ()


class RunTokens:
    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    async def load(cls, db: Database) -> RunTokens:
        """The installation's key, made by whichever component asks first."""
        async with db.begin() as conn:
            secret = (await conn.execute(select(auth_keys.c.secret).where(auth_keys.c.name == KEY_NAME))).scalar()
        if secret is None:
            try:
                async with db.begin() as conn:
                    await conn.execute(
                        insert(auth_keys).values(name=KEY_NAME, secret=secrets.token_hex(32), created_at=utcnow())
                    )
            except Conflict:
                pass  # another component made it at the same moment: theirs is the key
            async with db.begin() as conn:
                secret = (
                    await conn.execute(select(auth_keys.c.secret).where(auth_keys.c.name == KEY_NAME))
                ).scalar_one()
        return cls(bytes.fromhex(secret))

    def make(self, run_id: str, partition_id: str, run: int, job_id: str | None, max_run_time: float) -> str:
        claims = {"r": run_id, "p": partition_id, "n": run, "j": job_id, "e": int(time.time() + max_run_time + MARGIN)}
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{PREFIX}{body}.{self._sign(body)}"

    def check(self, token: str) -> RunClaims | None:
        """The claims of a genuine, unexpired run token; None otherwise."""
        if not token.startswith(PREFIX) or len(token) > 2000:
            return None
        body, _, signature = token[len(PREFIX) :].partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            found = RunClaims(
                str(claims["r"]),
                str(claims["p"]),
                int(claims["n"]),
                None if claims["j"] is None else str(claims["j"]),
                float(claims["e"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return found if found.expires > time.time() else None

    def container_secret(self, container_id: str) -> str:
        """The secret of a container's agent, derived from the key rather than stored: a provisioner
        that restarted computes it again and adopts the containers its predecessor left running."""
        return self._sign(f"container:{container_id}")

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
