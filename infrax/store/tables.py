"""The schema. Each component owns the tables named after it and touches no other's."""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
    text,
)

metadata = MetaData()

ID = String(64)

requests = Table(
    "scheduler_requests",
    metadata,
    Column("id", ID, primary_key=True),
    Column("job_id", ID, index=True),
    Column("project", String(200), nullable=False),
    Column("revision", String(100)),
    Column("changed_paths", JSON),
    # From a trusted push (a branch, a pull request of the repository itself): its runs get the
    # project's secrets. Never one from a fork.
    Column("trusted", Boolean, nullable=False, server_default=false()),
    Column("state", String(20), nullable=False, index=True),
    Column("message", Text),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

tasks = Table(
    "scheduler_tasks",
    metadata,
    Column("id", ID, primary_key=True),
    Column("request_id", ID, nullable=False, index=True),
    Column("job_id", ID),
    Column("position", Integer, nullable=False),
    Column("name", String(200), nullable=False),
    Column("definition", JSON, nullable=False),
    Column("state", String(20), nullable=False),
    Column("message", Text),
    Column("explanation", JSON),  # the optimizer's, decision by decision, when it was planned
    # A dependent task's dependencies all ended as it requires: it waits to be planned (infrax/graph.py).
    Column("ready_at", DateTime(timezone=True)),
)
# The planner's next ready dependents: the few waiting, not a scan of every task.
Index(
    "ix_tasks_ready",
    tasks.c.ready_at,
    postgresql_where=text("state = 'pending' AND ready_at IS NOT NULL"),
    sqlite_where=text("state = 'pending' AND ready_at IS NOT NULL"),
)

partitions = Table(
    "scheduler_partitions",
    metadata,
    Column("id", ID, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("task_id", ID, nullable=False),  # ix_partitions_task_state leads with it
    Column("request_id", ID, nullable=False, index=True),
    Column("job_id", ID),
    Column("idx", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("files", JSON, nullable=False),
    Column("container_type", String(100), nullable=False),
    Column("state", String(20), nullable=False),
    Column("run", Integer, nullable=False, default=0),
    Column("priority", Integer, nullable=False, default=0),
    # Fair share (scheduler/fair_share.py): whose it is, and its place in its type's queue.
    Column("project", String(200)),
    Column("fair_key", Float, nullable=False, default=0.0, server_default="0"),
    Column("expected_duration", Float),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("log_url", Text),
    Column("container_id", String(100)),
    Column("queued_at", DateTime(timezone=True)),
    Column("dispatched_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("claimed_by", String(100)),
    Column("claimed_at", DateTime(timezone=True)),
    # Re-runs of failures (#16): how many so far, what the next runs, where it must not run, and
    # what failed and then passed.
    Column("failure_reruns", Integer, nullable=False, default=0, server_default="0"),
    Column("rerun_tests", JSON(none_as_null=True)),
    Column("avoid_container", String(100)),
    Column("intermittent", JSON(none_as_null=True)),  # NULL, not JSON's null: "none" is what queries ask
    # A page of partitions in one state, in queue order (`GET /api/v1/partitions?state=…`).
    Index("ix_partitions_state_seq", "state", "seq"),
    # The claims held (a few, only while offering), which every heartbeat checks: not a scan of the queue.
    Index(
        "ix_partitions_claimed",
        "claimed_by",
        postgresql_where=text("claimed_by IS NOT NULL"),
        sqlite_where=text("claimed_by IS NOT NULL"),
    ),
    # Adding partitions up to their task reads only which states occur: this index answers that alone.
    Index("ix_partitions_task_state", "task_id", "state"),
)

# The claim's own order over the claimable rows alone: the next partitions of a type are the first
# entries, however many are queued behind them.
Index(
    "ix_partitions_claimable",
    partitions.c.container_type,
    partitions.c.fair_key,
    partitions.c.seq,
    postgresql_where=text("state = 'queued' AND claimed_by IS NULL"),
    sqlite_where=text("state = 'queued' AND claimed_by IS NULL"),
)

# Each project's place in each type's fair queue: where its queued work ends, in virtual starts.
fair_shares = Table(
    "scheduler_fair_shares",
    metadata,
    Column("container_type", String(100), primary_key=True),
    Column("project", String(200), primary_key=True),
    Column("finish", Float, nullable=False),
)

# Each type's virtual time: the lowest key queued when work last came in (it never goes back).
fair_clocks = Table(
    "scheduler_fair_clocks",
    metadata,
    Column("container_type", String(100), primary_key=True),
    Column("virtual_time", Float, nullable=False),
)

runs = Table(
    "executioner_runs",
    metadata,
    Column("run_id", String(100), primary_key=True),
    Column("partition_id", ID, nullable=False, index=True),
    Column("executioner", String(100), nullable=False, index=True),  # which executioner has the run
    Column("assignment", JSON, nullable=False),
    Column("state", String(20), nullable=False, index=True),
    Column("exit_code", Integer),
    Column("message", Text),
    Column("log_path", Text, nullable=False),
    Column("duration", Float),
    Column("file_durations", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
)

# One row per test case a run reported (JUnit in $INFRAX_REPORT_DIR); what a job, a task, a partition
# or one test across jobs shows.
test_results = Table(
    "executioner_test_results",
    metadata,
    Column("run_id", String(100), primary_key=True),
    Column("seq", Integer, primary_key=True),  # the case's place in the run's reports
    Column("partition_id", ID, nullable=False, index=True),
    Column("run", Integer, nullable=False),
    Column("task_id", ID, nullable=False, index=True),
    Column("task_name", String(200), nullable=False),
    Column("job_id", ID, index=True),
    Column("project", String(200), nullable=False),
    Column("test_id", String(1000), nullable=False),
    Column("file", String(1000)),
    Column("outcome", String(10), nullable=False),
    Column("duration", Float, nullable=False),
    Column("message", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
)
# One test's history across jobs, newest first.
Index("ix_test_results_test", test_results.c.project, test_results.c.test_id, test_results.c.recorded_at)

jobs = Table(
    "jobmaster_jobs",
    metadata,
    Column("id", ID, primary_key=True),
    Column("project", String(200), nullable=False),
    Column("revision", String(100), nullable=False),
    Column("repository", Text, nullable=False),
    Column("source", String(50), nullable=False),
    Column("state", String(20), nullable=False, index=True),
    Column("request_id", ID),
    Column("message", Text),
    Column("details", JSON),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("project", "revision", name="uq_jobs_project_revision"),
)

job_tasks = Table(
    "jobmaster_job_tasks",
    metadata,
    Column("task_id", ID, primary_key=True),
    Column("job_id", ID, nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("state", String(20), nullable=False),
    Column("message", Text),
)

deliveries = Table(
    "jobmaster_deliveries",
    metadata,
    Column("delivery_id", String(200), primary_key=True),
    Column("job_id", ID),
    Column("received_at", DateTime(timezone=True), nullable=False),
)


file_durations = Table(
    "optimizer_file_durations",
    metadata,
    Column("project", String(200), primary_key=True),
    Column("task_name", String(200), primary_key=True),
    Column("container_type", String(100), primary_key=True),
    Column("file", Text, primary_key=True),
    Column("estimate", Float, nullable=False),  # seconds: the moving average of the samples
    Column("samples", Integer, nullable=False),
    Column("last_duration", Float, nullable=False),
    Column("partition_index", Integer),  # where the file ran last, for stable partitions
    Column("partition_count", Integer),
    Column("recent_runs", JSON, nullable=False),  # run ids applied lately: redeliveries count once
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("recent_seconds", JSON),  # the last samples: the estimate is their median
    Column("held_seconds", JSON),  # an outlier waiting for the next run to agree (optimizer/history.py)
)

# How long a container of each type takes to start, as the provisioner measured it.
container_starts = Table(
    "optimizer_container_starts",
    metadata,
    Column("container_type", String(100), primary_key=True),
    Column("seconds", Float, nullable=False),  # the mean of the recent starts
    Column("samples", Integer, nullable=False),
    Column("recent", JSON, nullable=False),  # [[container id, seconds], …]: the last starts, each once
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

overheads = Table(
    "optimizer_overheads",
    metadata,
    Column("project", String(200), primary_key=True),
    Column("task_name", String(200), primary_key=True),
    Column("container_type", String(100), primary_key=True),
    Column("checkout", Float, nullable=False),  # seconds: the moving average of the runs' checkouts
    Column("checkout_samples", Integer, nullable=False),
    Column("start", Float, nullable=False),  # seconds of a run that no file's reported time accounts for
    Column("start_samples", Integer, nullable=False),
    Column("recent_runs", JSON, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)


# -- job master: where jobs came from (code hosts) --------------------------------------------

job_origins = Table(
    "jobmaster_job_origins",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("host", String(20), primary_key=True),  # github | hg
    Column("repository", String(400), primary_key=True),  # owner/name on GitHub; the hg repository's path or URL
    Column("ref", String(400), primary_key=True),  # pull/<number> | refs/heads/<branch> | push/<pushId>
    Column("pull_request", Integer),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Index("ix_jobmaster_job_origins_pull_request", "host", "repository", "pull_request"),
)

hg_repositories = Table(
    "jobmaster_hg_repositories",
    metadata,
    Column("repository", String(1000), primary_key=True),
    Column("baseline", JSON, nullable=False),  # nodes of its heads when first seen: history, not pushes
    Column("created_at", DateTime(timezone=True), nullable=False),
)

hg_pushes = Table(
    "jobmaster_hg_pushes",
    metadata,
    Column("repository", String(1000), primary_key=True),
    Column("push_id", Integer, primary_key=True),  # 1, 2, ... per repository, as the pushlog numbers them
    Column("tip", String(40), nullable=False),  # the push's last changeset: the revision its job tests
    Column("changesets", JSON, nullable=False),  # json-pushes v2 full=1 changeset objects, tip last
    Column("pusher", String(200), nullable=False),
    Column("date", BigInteger, nullable=False),  # seconds since the epoch
    Column("source", String(20), nullable=False),  # hook | poll
    Column("job_id", ID),
    Column("message", Text),  # why it has no job
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("repository", "tip", name="uq_jobmaster_hg_pushes_repository_tip"),
)

# Bearer tokens of every component's API (infrax.auth): the token itself is never stored, only its hash.
auth_tokens = Table(
    "auth_tokens",
    metadata,
    Column("id", String(32), primary_key=True),  # the token's public part: `ifx_<id>_<secret>`
    Column("name", String(200), nullable=False),  # what it is for: a person, a component, a run
    Column("token_hash", String(64), nullable=False),  # sha256 of the whole token, hex
    Column("scopes", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)

# Keys that sign what infrax hands out without storing it (run tokens), shared by every component.
auth_keys = Table(
    "auth_keys",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


def _outbox(name: str) -> Table:
    """A component's transactional outbox: messages written with the state change they announce,
    published by its relay in `id` order and deleted once the broker confirmed them."""
    return Table(
        name,
        metadata,
        Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
        Column("exchange", String(100), nullable=False),
        Column("routing_key", Text, nullable=False),
        Column("body", Text, nullable=False),  # the encoded message, checked when written
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("cc", Text),  # more routing keys of the same one message (AMQP's CC header), space-separated
    )


scheduler_outbox = _outbox("scheduler_outbox")
executioner_outbox = _outbox("executioner_outbox")
jobmaster_outbox = _outbox("jobmaster_outbox")

# Every scheduler process beats here; claims of one that stopped beating go back to the queue.
scheduler_instances = Table(
    "scheduler_instances",
    metadata,
    Column("id", String(32), primary_key=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)

# Executioners say they live here; the runs of one silent for long are taken over (executioner/takeover.py).
executioner_instances = Table(
    "executioner_instances",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("heartbeat_at", DateTime(timezone=True), nullable=False),
)

# Commit statuses still to be posted to GitHub: one row per job and repository, the newest state.
commit_statuses = Table(
    "jobmaster_commit_statuses",
    metadata,
    Column("job_id", ID, primary_key=True),
    Column("repository", String(300), primary_key=True),
    Column("sha", String(100), nullable=False),
    Column("body", JSON, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("deadline_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text),
)


# What the job master tells Treeherder about each partition, as a Taskcluster task: the partition
# (the Treeherder job) and each of its runs, so that every message and the queue API carry every
# run's times (Treeherder overwrites a job's times with each message it stores).
tc_tasks = Table(
    "jobmaster_tc_tasks",
    metadata,
    Column("partition_id", ID, primary_key=True),
    Column("job_id", ID, nullable=False, index=True),
    Column("request_id", ID, nullable=False),
    Column("task_id", ID, nullable=False),
    Column("task_name", String(200), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("count", Integer, nullable=False),
    Column("container_type", String(100), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

tc_runs = Table(
    "jobmaster_tc_runs",
    metadata,
    Column("partition_id", ID, primary_key=True),
    Column("run", Integer, primary_key=True),
    Column("state", String(20), nullable=False),  # Taskcluster's: pending running completed failed exception
    Column("reason_created", String(30), nullable=False),
    Column("reason_resolved", String(30)),
    Column("worker_id", String(100)),
    Column("log_url", Text),
    Column("message", Text),
    Column("scheduled", DateTime(timezone=True), nullable=False),
    Column("started", DateTime(timezone=True)),
    Column("resolved", DateTime(timezone=True)),
)
