"""A small project logic that decides in code, registered as `skip-docs`.

It runs the tests of a project laid out like `infrax.sample_project` (`tests/test_*.py`,
run by `ci/bootstrap.sh`) in up to three partitions, and runs nothing at all for a push
that changed only documentation: the job then completes at once.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from infrax import pathspecs
from infrax.jobmaster.plugin import Plan, ProjectLogic, Push, PushRejected
from infrax.model import TaskDefinition

DOCS = ("docs/*", "*.md", "*.rst", "*.txt", "LICENSE*")


def is_docs(path: str) -> bool:
    return any(pathspecs.matches(path, pattern) for pattern in DOCS)


class SkipDocsOnlyLogic(ProjectLogic):
    async def plan(self, push: Push) -> Plan:
        project = PurePosixPath(push.repository.rstrip("/")).name.removesuffix(".git") or "project"
        if push.changed_paths and all(is_docs(p) for p in push.changed_paths):
            return Plan(project=project, tasks=[])
        tests = sorted(pathspecs.select(["tests/test_*.py"], await push.list_files()).files)
        if not tests:
            raise PushRejected(f"no tests/test_*.py at revision {push.revision[:12]}")
        return Plan(
            project=project,
            tasks=[
                TaskDefinition(
                    name="tests",
                    files=tests,
                    container_tag=["linux_x86_64"],
                    bootstrapper=push.file_url("ci/bootstrap.sh"),
                    bootstrapper_arguments=[f"--repository={push.repository}", f"--revision={push.revision}"],
                    partitions=min(3, len(tests)),
                )
            ],
        )
