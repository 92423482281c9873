"""The fleet suites run on the job master's fixtures: its backends and stacks."""

from __future__ import annotations

from tests.jobmaster.conftest import backend, start_stack

__all__ = ["backend", "start_stack"]
