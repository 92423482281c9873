"""Every exchange name and routing key of infrax, in one place.

Routing keys always have six words, `_` standing for a missing one:

    <jobId>.<taskId>.<partitionId>.<run>.<containerType>.<state>

so a consumer can bind e.g. `<jobId>.#` for one job, `*.*.*.*.linux_x86_64.*` for one type, or
`#.completed` for one state. The last word is the state the message reports (a container
event's `event`), so a consumer that wants only some states never receives the others: the
broker, not the consumer, drops them.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "exchange/infrax/v1"
RUNS = f"{PREFIX}/partition-runs"  # executioner/provisioner -> scheduler: what happened to a run
PARTITIONS = f"{PREFIX}/partition-status"  # scheduler: every partition transition
TASKS = f"{PREFIX}/task-status"  # scheduler: every task transition
REQUESTS = f"{PREFIX}/task-request-status"  # scheduler: every task request transition
CONTAINERS = f"{PREFIX}/containers"  # provisioner: capacity freed or lost
JOBS = f"{PREFIX}/job-status"  # job master: every job transition
TREEHERDER = f"{PREFIX}/treeherder"  # job master: Treeherder pulse job messages

# Taskcluster's queue exchanges, as a stock Treeherder's pulse listener binds them: each partition
# is a task there (docs/code-hosts.md). Routing keys are the queue's: `primary.<taskId>.<runId>.
# <workerGroup>.<workerId>.<provisionerId>.<workerType>.<schedulerId>.<taskGroupId>._`, and each
# task route R is CC'd as `route.R`.
TASKCLUSTER_QUEUE = "exchange/taskcluster-queue/v1"
TC_TASK_EVENTS = ("task-defined", "task-pending", "task-running", "task-completed", "task-failed", "task-exception")
TC_EXCHANGES = tuple(f"{TASKCLUSTER_QUEUE}/{event}" for event in TC_TASK_EVENTS)

# taskcluster-github's: a GitHub push or pull request event, as Treeherder's push ingestion reads it.
# Routing keys `primary.<organization>.<repository>[.<action>]`.
GITHUB_PUSH = "exchange/taskcluster-github/v1/push"
GITHUB_PULL_REQUEST = "exchange/taskcluster-github/v1/pull-request"

# hg.mozilla.org's: a Mercurial push, as Treeherder's push ingestion reads it (`hgmo: true`). Routing
# key the repository's name; Treeherder fetches the push from the `push_full_json_url` it names.
HG_PUSHES = "exchange/hgpushes/v1"

ALL_EXCHANGES = (
    RUNS,
    PARTITIONS,
    TASKS,
    REQUESTS,
    CONTAINERS,
    JOBS,
    TREEHERDER,
    *TC_EXCHANGES,
    GITHUB_PUSH,
    GITHUB_PULL_REQUEST,
    HG_PUSHES,
)

MISSING = "_"


def routing_key(
    job_id: str | None = None,
    task_id: str | None = None,
    partition_id: str | None = None,
    run: int | None = None,
    container_type: str | None = None,
    state: str | None = None,
) -> str:
    words = (job_id, task_id, partition_id, None if run is None else str(run), container_type, state)
    return ".".join(word or MISSING for word in words)


def state_bindings(states: Iterable[str]) -> list[str]:
    """Binding keys for every message whose state (the last word) is one of `states`."""
    return [f"*.*.*.*.*.{state}" for state in sorted(states)]
