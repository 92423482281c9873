"""The dashboard's pages: the push list, a job, a partition and its log, sign-in, live news.

Every page reads the components' APIs with the viewer's own token, from a cookie set by signing in
(HttpOnly, SameSite=Strict), or with none where the installation lets anyone read (`public_read`).
An action (cancel, re-run) is the job master's own endpoint called with that token, so it is
allowed exactly when the API would allow it; it must come from this site's script (a custom
header, which a form or a link on another site cannot send). Every POST, sign-in included, must
come from a page of this site (`Origin`, else `Sec-Fetch-Site`): another site's form cannot sign a
viewer in with a token of its choosing. Only this installation's host names are answered.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry
from starlette.middleware.trustedhost import TrustedHostMiddleware

from infrax.bus import Bus
from infrax.http import ServiceError
from infrax.metrics import metrics_route
from infrax.model import State, run_id_of
from infrax.web.live import Live
from infrax.web.views import PUSH_PAGE, PartitionRow, PushRow, Views, age, chunk_links, symbol, where_from

HERE = Path(__file__).parent
COOKIE = "infrax_token"
ACTIONS = ("cancel", "rerun", "rerun-failed")
ROWS_MARK = "<!-- rows -->"
PUSH_SLICE = 100  # rows of the push list read and sent at a time


class SameOriginPosts:
    """ASGI middleware: a POST whose `Origin` (or, without one, `Sec-Fetch-Site`) says it came from
    another site is refused (403). Browsers send one or the other with every POST; a client that
    sends neither is no browser, and no victim of a forged form."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers") or []}
            if not _same_origin(headers):
                refusal = JSONResponse({"detail": "a POST to the dashboard must come from its own pages"}, 403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _same_origin(headers: dict[str, str]) -> bool:
    origin = headers.get("origin")
    if origin is not None:
        return origin != "null" and urlsplit(origin).netloc.lower() == headers.get("host", "").lower()
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


class Dashboard:
    def __init__(self, views: Views, bus: Bus) -> None:
        self.views = views
        self.live = Live(bus)
        self.metrics = CollectorRegistry()
        bus.metrics.register(self.metrics)

    async def start(self) -> None:
        await self.live.start()

    async def stop(self) -> None:
        await self.live.stop()


def create_app(dashboard: Dashboard, allowed_hosts: frozenset[str] | None = None) -> FastAPI:
    app = FastAPI(title="infrax dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SameOriginPosts)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted(allowed_hosts))
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.globals["symbol"] = symbol
    templates.env.globals["chunk_links"] = chunk_links
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    views = dashboard.views

    def headers_of(request: Request) -> dict[str, str]:
        if request.headers.get("authorization"):  # a scraper's or a script's own token
            return {"Authorization": request.headers["authorization"]}
        token = request.cookies.get(COOKIE)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def render(http: Request, name: str, code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("signed_in", COOKIE in http.cookies)
        return templates.TemplateResponse(http, name, context, status_code=code)

    def refused(request: Request, error: ServiceError) -> HTMLResponse:
        if error.status in (401, 403):
            where = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            reason = "Your token may not read this." if COOKIE in request.cookies else "Reading needs a token."
            return render(request, "login.html", 401, reason=f"{reason} ({error.detail})", next=where)
        status = error.status if error.status and error.status < 500 else 502
        return render(request, "error.html", status, status=status, detail=str(error))

    @app.get("/", response_class=HTMLResponse)
    async def push_list(
        request: Request,
        project: str | None = None,
        state: str | None = Query(None, pattern="^[a-z]*$"),
        author: str | None = None,
        limit: int = Query(PUSH_PAGE, ge=1, le=1000),
        after: str | None = None,
    ) -> Response:
        """The page streams: its rows go out a slice at a time, each slice's chunks read while the
        browser builds the slice before (a thousand rows are a second of work split over both)."""
        headers = headers_of(request)
        try:
            jobs, after_next = await views.jobs_page(
                headers, project=project, state=state or None, author=author, limit=limit, after=after
            )
        except ServiceError as error:
            return refused(request, error)
        following = None
        if after_next:
            kept = {k: v for k, v in (("project", project), ("state", state), ("author", author)) if v}
            following = "/?" + urlencode({**kept, "limit": limit, "after": after_next})
        page = templates.get_template("push_list.html").render(
            request=request,
            signed_in=COOKIE in request.cookies,
            jobs=jobs,
            project=project,
            state=state,
            author=author,
            states=[s.value for s in State],
            after=after,
            following=following,
        )
        before, _, rest = page.partition(ROWS_MARK)
        rows_template = templates.get_template("push_rows.html")

        async def body() -> AsyncIterator[str]:
            yield before
            for start in range(0, len(jobs), PUSH_SLICE):
                slice_ = jobs[start : start + PUSH_SLICE]
                try:
                    rows = await views.push_rows(headers, slice_)
                except ServiceError:  # the page is on its way: these rows are shown without their tasks
                    rows = [PushRow.of(j) for j in slice_]
                yield rows_template.render(rows=rows)
            yield rest

        return StreamingResponse(body(), media_type="text/html; charset=utf-8")

    @app.get("/fragments/push/{job_id}", response_class=HTMLResponse)
    async def push_row(request: Request, job_id: str) -> HTMLResponse:
        try:
            row = await views.push_row(headers_of(request), job_id)
        except ServiceError as error:
            return HTMLResponse("", status_code=error.status or 502)
        return render(request, "push_rows.html", rows=[row])

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job_page(request: Request, job_id: str) -> HTMLResponse:
        try:
            job, task_request, previous = await views.job(headers_of(request), job_id)
        except ServiceError as error:
            return refused(request, error)
        partitions = {
            t.id: [PartitionRow(p) for p in t.partitions] for t in (task_request.tasks if task_request else [])
        }
        return render(
            request,
            "job.html",
            job=job,
            task_request=task_request,
            previous=previous,
            partitions=partitions,
            author=job.details.get("author"),
            where=where_from(job),
            age=age(job.created_at),
        )

    @app.get("/queue", response_class=HTMLResponse)
    async def queue_page(request: Request) -> HTMLResponse:
        try:
            types = await views.queue(headers_of(request))
        except ServiceError as error:
            return refused(request, error)
        return render(request, "queue.html", types=types)

    @app.get("/workers", response_class=HTMLResponse)
    async def workers_page(request: Request) -> HTMLResponse:
        try:
            workers = await views.workers(headers_of(request))
        except ServiceError as error:
            return refused(request, error)
        return render(request, "workers.html", workers=workers)

    @app.get("/partitions/{partition_id}", response_class=HTMLResponse)
    async def partition_page(request: Request, partition_id: str, run: int | None = Query(None, ge=0)) -> HTMLResponse:
        try:
            part, task_name, job = await views.partition(headers_of(request), partition_id)
        except ServiceError as error:
            return refused(request, error)
        shown = part.run if run is None or run > part.run else run
        tests = await views.tests(headers_of(request), partition_id, shown)
        return render(request, "partition.html", part=part, task_name=task_name, job=job, run=shown, tests=tests)

    @app.get("/partitions/{partition_id}/log")
    async def partition_log(
        request: Request,
        partition_id: str,
        run: int = Query(0, ge=0),
        offset: int = Query(0, ge=0),
        line: int = Query(1, ge=1),
    ) -> JSONResponse:
        """Whole lines of a run's log from `offset`, each with its failure kind (`infrax.failures`)."""
        try:
            chunk = await views.log(headers_of(request), partition_id, run, offset, line)
        except ServiceError as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status or 502)
        return JSONResponse(
            {"lines": chunk.lines, "offset": chunk.offset, "complete": chunk.complete, "firstLine": chunk.first_line}
        )

    @app.get("/partitions/{partition_id}/raw")
    async def raw_log(request: Request, partition_id: str, run: int = Query(0, ge=0)) -> Response:
        """The run's log as the executioner keeps it, streamed."""
        client = views.executioner.http
        upstream = client.build_request(
            "GET", f"/api/v1/runs/{run_id_of(partition_id, run)}/log", headers=headers_of(request)
        )
        answer = await client.send(upstream, stream=True)
        if answer.status_code >= 400:
            await answer.aread()
            await answer.aclose()
            return Response(answer.text, status_code=answer.status_code, media_type="text/plain")

        async def body() -> Any:
            try:
                async for piece in answer.aiter_raw():
                    yield piece
            finally:
                await answer.aclose()

        disposition = f'inline; filename="{run_id_of(partition_id, run)}.log"'
        return StreamingResponse(
            body(), media_type="text/plain; charset=utf-8", headers={"Content-Disposition": disposition}
        )

    @app.post("/actions/jobs/{job_id}/{action}")
    async def act(request: Request, job_id: str, action: str) -> JSONResponse:
        if action not in ACTIONS:
            return JSONResponse({"detail": f"no action {action!r}: {', '.join(ACTIONS)}"}, status_code=404)
        if request.headers.get("X-Infrax-Action") != "1":
            return JSONResponse({"detail": "actions come from the dashboard's own pages"}, status_code=403)
        try:
            job = await views.action(headers_of(request), job_id, action)
        except ServiceError as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status or 502)
        return JSONResponse({"id": job.id, "state": job.state})

    @app.get("/events")
    async def events(request: Request) -> Response:
        """Server-sent events: every job's, task's and partition's news, for whoever may read jobs."""
        try:
            await views.jobmaster.call("GET", "/api/v1/jobs", params={"limit": 1}, headers=headers_of(request))
        except ServiceError as error:
            return JSONResponse({"detail": error.detail}, status_code=error.status or 502)
        return StreamingResponse(
            dashboard.live.events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/login", response_class=HTMLResponse)
    async def login_page(request: Request, next: str = "/") -> HTMLResponse:
        return render(request, "login.html", next=next if next.startswith("/") else "/", reason=None)

    @app.post("/login")
    async def login(token: str = Form(..., max_length=500), next: str = Form("/")) -> Response:
        answer = RedirectResponse(next if next.startswith("/") and not next.startswith("//") else "/", 303)
        answer.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", max_age=30 * 86400)
        return answer

    @app.get("/logout")
    async def logout() -> Response:
        answer = RedirectResponse("/", 303)
        answer.delete_cookie(COOKIE)
        return answer

    @app.get("/api/v1/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    async def may_read(request: Request) -> None:
        """Whoever may read jobs (the `:read` scopes, or anyone with public_read) may read metrics."""
        try:
            await views.jobmaster.call("GET", "/api/v1/jobs", params={"limit": 1}, headers=headers_of(request))
        except ServiceError as error:
            raise HTTPException(error.status or 502, error.detail) from None

    metrics_route(app, dashboard.metrics, {"dependencies": [Depends(may_read)]}, description="the bus's counts")
    for route in app.routes:  # pages, not an API: no OpenAPI document describes them
        if hasattr(route, "include_in_schema"):
            route.include_in_schema = False
    return app
