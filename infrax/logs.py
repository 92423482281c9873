"""How a serving process logs: one line per lifecycle event (a push, a plan, a job's end, a
container started or lost), as text or JSON (`--log-format json`, one object a line for a log
shipper); the lines of every HTTP request and of libraries' chatter only when asked for
(`--log-requests`): a short try-out logged 186 capacity polls and 7 migration notices otherwise."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

FORMATS = ("text", "json")
TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a library says at INFO is about itself: each request (httpx), each migration (alembic).
CHATTY = ("httpx", "httpcore", "alembic", "aiormq", "aio_pika", "uvicorn.access")


def configure(log_format: str = "text", requests: bool = False) -> None:
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r} is not one of {', '.join(FORMATS)}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.INFO if requests else logging.WARNING)
