"""`/docs` (Swagger UI) and `/redoc` from the files shipped in the `fastapi-offline` package, not from
a CDN, so the pages work on a machine without internet (FastAPI's defaults load them from
jsdelivr). Only its files are used; the pages are FastAPI's own."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.requests import Request
from starlette.responses import HTMLResponse

ASSETS = "/docs/assets"
FILES = Path(fastapi_offline.__file__).parent / "static"


def offline_docs(app: FastAPI) -> None:
    """Public, as FastAPI's own `/docs` is: the pages and their files describe the API, its calls
    still need their tokens (Swagger UI's Authorize button takes one)."""
    app.mount(ASSETS, StaticFiles(directory=FILES), name="docs-assets")
    openapi = app.openapi_url or "/openapi.json"

    async def docs(_request: Request) -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi,
            title=f"{app.title}: API",
            swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS}/favicon.png",
        )

    async def redoc(_request: Request) -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi,
            title=f"{app.title}: API",
            redoc_js_url=f"{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS}/favicon.png",
            with_google_fonts=False,
        )

    app.add_route("/docs", docs, include_in_schema=False)
    app.add_route("/redoc", redoc, include_in_schema=False)
