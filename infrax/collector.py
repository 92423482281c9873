"""Garbage collection tuned for a long-running server process.

A component's process keeps a few hundred thousand objects alive from start-up on (modules,
FastAPI routes, pydantic and SQLAlchemy schemas) and makes short-lived ones by the hundred
thousand per large request. With CPython's defaults, every full collection walks them all: under
intake of 10,000-partition requests that was a pause of 70–85 ms in the event loop's thread, many
times a second. The start-up objects are frozen (never walked again; they live as long as the
process anyway), and collections are made rarer, so that a request's transient objects die young
without being promoted and walked again and again. The same as Instagram's and most CPython
servers' practice; only for a process that serves (`infrax up`, `infrax <component>`), never for
a library user's or a test's.
"""

from __future__ import annotations

import gc

# Youngest generation collected every 10,000 net allocations (default 700), the middle one every
# 10 of those, the oldest every 10 of those when CPython's own rule agrees (a quarter more
# long-lived objects). Rarer still (50, 1,000), a million queued partitions left the process
# at 165 MB instead of 147, for no gain in latency measured.
THRESHOLDS = (10_000, 10, 10)


def settle_after_start() -> None:
    """Once the process has started serving: what is alive now lives as long as the process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
