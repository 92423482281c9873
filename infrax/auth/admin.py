"""The admin token of an installation that was given none: made once, kept in a file only its
owner can read, so `infrax up` and the CLI beside it work with no configuration at all."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from infrax.auth.scopes import ADMIN
from infrax.auth.tokens import TokenStore

log = logging.getLogger(__name__)


async def ensure_admin_token(tokens: TokenStore, path: Path) -> str:
    """The token in `path` if it is still valid; else a new admin token written there (mode 0600)."""
    try:
        current = path.read_text().strip()  # noqa: ASYNC240 - once, at start
    except FileNotFoundError:
        current = ""
    if current and (caller := await tokens.check(current)) is not None and caller.may(ADMIN):
        return current
    _, token = await tokens.create("admin (made by infrax up)", [ADMIN])
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(token + "\n")
    os.replace(fresh, path)  # whole or not at all, also when two components start at once
    log.info("made an admin token: %s", path)
    return token
