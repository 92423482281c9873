"""What every component's REST app shares: error bodies that say what is wrong."""

from __future__ import annotations

import logging

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
