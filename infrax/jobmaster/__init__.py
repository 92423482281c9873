"""The job master: per-project business logic that turns pushes into jobs."""
