"""What every component's REST app shares: error bodies that say what is wrong."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from infrax.http import ServiceError
from infrax.store import Conflict, InvalidData, StoreError

log = logging.getLogger(__name__)


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_body(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in error.errors()
        ]
        return JSONResponse(status_code=422, content={"detail": "; ".join(problems), "errors": problems})

    @app.exception_handler(ServiceError)
    async def dependency_failed(_request: Request, error: ServiceError) -> JSONResponse:
        log.warning("dependency failed: %s", error)
        return JSONResponse(status_code=502, content={"detail": str(error)})

    @app.exception_handler(StoreError)
    async def store_failed(_request: Request, error: StoreError) -> JSONResponse:
        log.error("store failed: %s", error)
        return JSONResponse(status_code=503, content={"detail": f"storage unavailable, retry: {error}"})

    @app.exception_handler(Conflict)
    async def conflict(_request: Request, error: Conflict) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": f"conflicts with what is stored: {error}"})

    @app.exception_handler(InvalidData)
    async def invalid_data(_request: Request, error: InvalidData) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": f"the store refused the values: {error}"})


MAX_BODY_BYTES = 32 * 1024 * 1024


class BodyLimit:
    """ASGI middleware: a request body past `limit` bytes is refused with 413 before it is read whole.

    The largest legitimate body is a task request of 1,000 tasks naming 200,000 files: a few MB."""

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await _too_large(scope, receive, send, self.limit)
            return
        seen = 0
        refused = False

        async def counted() -> Any:
            nonlocal seen, refused
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                # Answered here, as the body streams (chunked too): whatever the app makes of the
                # broken read (FastAPI: a 400) is never sent.
                if not refused:
                    refused = True
                    await _too_large(scope, receive, send, self.limit)
                raise _TooLarge
            return message

        async def unless_refused(message: Any) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise


class _TooLarge(Exception):
    pass


async def _too_large(scope: Any, receive: Any, send: Any, limit: int) -> None:
    await JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)(scope, receive, send)
