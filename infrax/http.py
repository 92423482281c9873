"""What every component's typed client shares: an injected httpx.AsyncClient and clear errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import httpx

from infrax.retry import Outage, retry

T = TypeVar("T")


class ServiceError(Exception):
    """Another component answered with an error, or could not be reached."""

    def __init__(self, service: str, status: int | None, detail: str) -> None:
        super().__init__(f"{service}: {detail}" if status is None else f"{service} answered {status}: {detail}")
        self.service = service
        self.status = status
        self.detail = detail

    @property
    def unavailable(self) -> bool:
        """The component is down, overloaded or failing (no answer, 5xx, 429): worth waiting for,
        and never the fault of whatever was being asked for."""
        return self.status is None or self.status >= 500 or self.status == 429


async def while_unavailable(work: Callable[[], Awaitable[T]], deadline: float, during: Outage) -> T:
    """`await work()`, waiting with backoff while the component it calls is down or failing (no
    answer, 5xx, 429) for at most `deadline` seconds; a refusal (another 4xx) is raised at once."""
    return await retry(
        work,
        on=ServiceError,
        when=lambda e: isinstance(e, ServiceError) and e.unavailable,
        deadline=deadline,
        first=0.2,
        maximum=2.0,
        during=during,
    )


class ServiceClient:
    """Base of the typed clients. The transport is injected: ASGI in one process, TCP otherwise."""

    service = "service"

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def call(self, method: str, path: str, **kwargs: Any) -> Any:
        return _body(await self._send(method, path, **kwargs))

    async def every(self, path: str, params: dict[str, Any] | None = None, limit: int | None = None) -> list[Any]:
        """Every item of a paginated list (following each page's `Link: rel="next"`), or its first `limit`."""
        items: list[Any] = []
        url: str | None = path
        while url is not None and (limit is None or len(items) < limit):
            response = await self._send("GET", url, params=params)
            items += _body(response)
            link = response.links.get("next")
            url, params = (None if link is None else str(link["url"])), None
        return items if limit is None else items[:limit]

    async def page(
        self, path: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None
    ) -> tuple[list[Any], str | None]:
        """One page of a paginated list, and the `after` cursor of the next (None on the last)."""
        response = await self._send("GET", path, params=params, headers=headers)
        link = response.links.get("next")
        after = httpx.URL(str(link["url"])).params.get("after") if link else None
        return _body(response), after

    async def send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer itself (a stream's, a log's with its headers); a 4xx or 5xx raises."""
        return await self._send(method, path, **kwargs)

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self.http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise ServiceError(self.service, None, f"unreachable at {self.http.base_url}: {error!r}") from error
        if response.status_code >= 400:
            raise ServiceError(self.service, response.status_code, _detail(response))
        return response


def _body(response: httpx.Response) -> Any:
    if response.status_code == 204 or not response.content:
        return None
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    detail = body.get("detail", body) if isinstance(body, dict) else body
    return detail if isinstance(detail, str) else str(detail)


def asgi_client(app: Any, base_url: str, timeout: float = 60.0) -> httpx.AsyncClient:
    """A client that calls an app in this process without opening a socket."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url, timeout=timeout)


def tcp_client(base_url: str, timeout: float = 60.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url, timeout=timeout, limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
    )
