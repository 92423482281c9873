"""The one retry policy: exponential backoff with jitter (tenacity), and one log line per outage.

Every place that waits for a dependency to come back (the broker, the database, another
component, GitHub) retries through `retry` with the same shape of backoff, and reports through
an `Outage`: one warning when the dependency starts failing, one line when it works again,
whatever the number of callers and attempts in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

T = TypeVar("T")
log = logging.getLogger("infrax.outage")


class Outage:
    """A dependency's availability as this process sees it; logs its changes, not each failure."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.failures = 0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, error: BaseException | None) -> None:
        self.failures += 1
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s unavailable (%s); retrying until it is back", self.what, _describe(error))
        else:
            log.debug("%s still unavailable: %s", self.what, _describe(error))

    def recovered(self) -> None:
        if self.since is not None:
            log.warning(
                "%s available again after %.1f s (%d failed attempts)",
                self.what,
                time.monotonic() - self.since,
                self.failures,
            )
            self.since, self.failures = None, 0


_OUTAGES: dict[str, Outage] = {}


def outage(what: str) -> Outage:
    """The process-wide `Outage` of one dependency ("the database", "the broker", …)."""
    found = _OUTAGES.get(what)
    if found is None:
        found = _OUTAGES[what] = Outage(what)
    return found


def delay(attempt: int, first: float = 0.1, maximum: float = 5.0) -> float:
    """The pause before retry number `attempt` (0-based), without jitter: for persisted queues
    that store when to try next instead of sleeping."""
    return float(min(maximum, first * 2**attempt))


async def retry(
    work: Callable[[], Awaitable[T]],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    attempts: int | None = None,
    deadline: float | None = None,
    first: float = 0.1,
    maximum: float = 5.0,
    during: Outage | None = None,
    when: Callable[[BaseException], bool] | None = None,
) -> T:
    """`await work()` until it returns; errors of `on` are retried with backoff, for at most
    `attempts` tries and `deadline` seconds (neither: until it works), then re-raised. With
    `when`, only the errors of `on` it says yes to are retried."""
    stop: stop_base = stop_never
    if attempts is not None:
        stop = stop_after_attempt(attempts)
    if deadline is not None:
        stop = stop | stop_after_delay(deadline) if attempts is not None else stop_after_delay(deadline)

    def before_sleep(state: RetryCallState) -> None:
        if during is not None and state.outcome is not None:
            during.failed(state.outcome.exception())

    retrying = AsyncRetrying(
        retry=retry_if_exception_type(on)
        if when is None
        else retry_if_exception(lambda e: isinstance(e, on) and when(e)),
        stop=stop,
        wait=wait_exponential_jitter(multiplier=first, max=maximum, jitter=first),
        before_sleep=before_sleep,
        reraise=True,
    )

    async def attempt() -> T:
        # A coroutine function of its own: tenacity calls any other callable (a lambda) synchronously.
        return await work()

    result: T = await retrying(attempt)
    if during is not None:
        during.recovered()
    return result


def _describe(error: BaseException | None) -> str:
    if error is None:
        return "no answer"
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "…"
