"""The Treeherder suites run on the job master's fixtures: its backends, code-host payloads and stacks."""

from __future__ import annotations

from tests.jobmaster.conftest import backend, github_api, start_stack

__all__ = ["backend", "github_api", "start_stack"]
