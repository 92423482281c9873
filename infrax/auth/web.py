"""Authentication and authorization of every component's REST API, and the Host header check.

Every route of an app made by `secured_app` needs a bearer token (401 without one, or with one
that is not valid) and, where it says so, a scope (403 naming it). Only `/api/v1/health` and the
routes marked `public` (a GitHub webhook, which is signed instead) need none; with `public_read`
the GET routes marked `readable` need none either, for a public dashboard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.routing import Match

from infrax.api_errors import BodyLimit
from infrax.auth.scopes import could_satisfy
from infrax.auth.tokens import Caller, TokenStore
from infrax.docs_ui import offline_docs

log = logging.getLogger(__name__)

ANONYMOUS = Caller(token_id="", name="anonymous", scopes=())
PUBLIC_PATHS = frozenset({"/api/v1/health"})
_ROUTE_SCOPE = "x-infrax-scope"


class Guard:
    """The token check one app's routes share."""

    def __init__(self, tokens: TokenStore, *, public_read: bool = False) -> None:
        self.tokens = tokens
        self.public_read = public_read

    async def authenticate(self, request: Request) -> Caller:
        """The dependency every route has: who is calling (401 when nobody known)."""
        route = request.scope.get("route")
        openapi_extra = getattr(route, "openapi_extra", None) or {}
        caller: Caller | None
        if request.url.path in PUBLIC_PATHS or openapi_extra.get("x-infrax-public"):
            caller = ANONYMOUS
        else:
            caller = await self._from_header(request)
            if caller is None:
                if self.public_read and request.method == "GET" and openapi_extra.get("x-infrax-readable"):
                    caller = ANONYMOUS
                else:
                    raise HTTPException(
                        401,
                        "a valid bearer token is needed (Authorization: Bearer ifx_…)",
                        headers={"WWW-Authenticate": "Bearer"},
                    )
        request.state.caller = caller
        return caller

    async def _from_header(self, request: Request) -> Caller | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        caller = await self.tokens.check(token.strip())
        if caller is None:
            log.warning("refused a request to %s %s: invalid token", request.method, request.url.path)
        return caller


def caller_of(request: Request) -> Caller:
    caller: Caller = request.state.caller
    return caller


def require(caller: Caller, scope: str) -> None:
    """Refuse (403) unless the caller holds `scope`; for scopes known only once the body is read."""
    if not caller.may(scope):
        log.warning("refused %s (token %s): missing scope %s", caller.name, caller.token_id, scope)
        raise HTTPException(
            403, f"missing scope {scope} (token {caller.name!r} holds: {', '.join(caller.scopes) or 'none'})"
        )


def scope(required: str) -> Any:
    """A route dependency: the caller must hold `required`; a trailing `:` means "some scope that
    starts so", the rest being checked with `require` once the body says which (a project, say)."""

    async def check(request: Request) -> None:
        caller = caller_of(request)
        if caller is ANONYMOUS:
            return  # let in by `authenticate`: a public route, or a readable one with public_read
        if required.endswith(":"):
            if not could_satisfy(caller.scopes, required):
                log.warning("refused %s (token %s): no scope %s…", caller.name, caller.token_id, required)
                raise HTTPException(
                    403,
                    f"missing scope {required}<…> (token {caller.name!r} holds: {', '.join(caller.scopes) or 'none'})",
                )
            return
        require(caller, required)

    check.scope = required  # type: ignore[attr-defined]  # read by docs and tests
    return Depends(check)


def route_options(required: str | None = None, *, public: bool = False, readable: bool = False) -> dict[str, Any]:
    """Keyword arguments for a route: its scope's dependency and what the OpenAPI document says of it."""
    extra: dict[str, Any] = {}
    if required:
        extra[_ROUTE_SCOPE] = required
    if public:
        extra["x-infrax-public"] = True
    if readable:
        extra["x-infrax-readable"] = True
    options: dict[str, Any] = {"openapi_extra": extra}
    if required:
        options["dependencies"] = [scope(required)]
    return options


class TokenFirst:
    """ASGI middleware: a request that carries a body is refused (401) before a byte of its body is
    read when its token is not valid, so nobody without a token makes a component parse anything.
    Routes marked `public` (a signed webhook) read theirs, bounded by `BodyLimit`; GETs are left to
    the route's own check (which also lets `public_read` in)."""

    def __init__(self, app: Any, guard: Guard, routed: FastAPI) -> None:
        self.app = app
        self.guard = guard
        self.routed = routed

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS") or self._public(scope):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope.get("headers") or [] if k == b"authorization"), b"")
        scheme, _, token = header.decode("latin-1").partition(" ")
        if scheme.lower() != "bearer" or not token.strip() or await self.guard.tokens.check(token.strip()) is None:
            refusal = JSONResponse(
                {"detail": "a valid bearer token is needed (Authorization: Bearer ifx_…)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _public(self, scope: Any) -> bool:
        for route in self.routed.router.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                extra = getattr(route, "openapi_extra", None) or {}
                return bool(extra.get("x-infrax-public"))
        return False


@dataclass(frozen=True)
class Security:
    """What every app of one process is given: the token check, and the host names it answers to
    (None: any, for a deployment whose reverse proxy checks them)."""

    guard: Guard
    allowed_hosts: frozenset[str] | None


class OpenReads:
    """ASGI middleware: GETs under `prefixes` may be read by a page of any origin
    (`Access-Control-Allow-Origin: *`), so Treeherder's UI, served from its own origin, can
    `fetch()` logs, artifacts and the queue API. Safe because nothing ambient authorizes them:
    a browser sends no infrax token of its own, so a page reads only what `public_read` opens
    to anyone, and only reads: no other method is opened."""

    def __init__(self, app: Any, prefixes: tuple[str, ...]) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] not in ("GET", "HEAD")
            or not scope["path"].startswith(self.prefixes)
        ):
            await self.app(scope, receive, send)
            return

        async def send_open(message: Any) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"access-control-allow-origin", b"*")]
            await send(message)

        await self.app(scope, receive, send_open)


def secured_app(title: str, security: Security) -> FastAPI:
    """A component's app: every route behind the guard, and requests only for our own host names
    (a page that DNS rebinding brought to 127.0.0.1 still names its own)."""
    app = FastAPI(
        title=title,
        version="1",
        dependencies=[Depends(security.guard.authenticate)],
        docs_url=None,  # offline_docs: the same page, its assets from the package
        redoc_url=None,
    )
    offline_docs(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(TokenFirst, guard=security.guard, routed=app)
    if security.allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(security.allowed_hosts))
    _document_errors_as_sent(app)
    return app


def _document_errors_as_sent(app: FastAPI) -> None:
    """The OpenAPI document shows a 422 as infrax sends it (infrax.api_errors): one line naming what is
    wrong in `detail`, each problem in `errors`, not FastAPI's list of objects."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schema.setdefault("components", {}).setdefault("schemas", {})["HTTPValidationError"] = {
                "title": "HTTPValidationError",
                "type": "object",
                "required": ["detail"],
                "properties": {
                    "detail": {"type": "string", "title": "Detail"},
                    "errors": {"type": "array", "items": {"type": "string"}, "title": "Errors"},
                },
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
