"""Every exchange name and routing key of infrax, in one place.

Routing keys always have five words, `_` standing for a missing one:

    <jobId>.<taskId>.<partitionId>.<run>.<containerType>

so a consumer can bind e.g. `<jobId>.#` for one job or `*.*.*.*.linux_x86_64` for one type.
"""

from __future__ import annotations

PREFIX = "exchange/infrax/v1"
RUNS = f"{PREFIX}/partition-runs"  # executioner/provisioner -> scheduler: what happened to a run
PARTITIONS = f"{PREFIX}/partition-status"  # scheduler: every partition transition
TASKS = f"{PREFIX}/task-status"  # scheduler: every task transition
REQUESTS = f"{PREFIX}/task-request-status"  # scheduler: every task request transition
CONTAINERS = f"{PREFIX}/containers"  # provisioner: capacity freed or lost
JOBS = f"{PREFIX}/job-status"  # job master: every job transition
TREEHERDER = f"{PREFIX}/treeherder"  # job master: Treeherder pulse job messages

ALL_EXCHANGES = (RUNS, PARTITIONS, TASKS, REQUESTS, CONTAINERS, JOBS, TREEHERDER)

MISSING = "_"


def routing_key(
    job_id: str | None = None,
    task_id: str | None = None,
    partition_id: str | None = None,
    run: int | None = None,
    container_type: str | None = None,
) -> str:
    words = (job_id, task_id, partition_id, None if run is None else str(run), container_type)
    return ".".join(word or MISSING for word in words)
