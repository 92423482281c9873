"""The objects every component speaks about, as they travel over REST and the bus.

Field names are camelCase on the wire (the design note's `containerTag`,
`bootstrapperArguments`, ...) and snake_case in Python; both are accepted on input.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

WIRE_VERSION: Final = 1


def new_id() -> str:
    """A fresh identifier: hex only, so it is always one word of a routing key."""
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class WireModel(BaseModel):
    """Base of every wire object: camelCase aliases, unknown fields refused."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", use_enum_values=True)

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


class State(StrEnum):
    """Life cycle shared by partitions, tasks, task requests and jobs."""

    PENDING = "pending"  # accepted, not planned yet
    QUEUED = "queued"  # planned, waiting for a container
    DISPATCHED = "dispatched"  # a provisioner accepted it
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # the task's own command failed
    EXCEPTION = "exception"  # the infrastructure failed, retries used up
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # the optimizer decided it need not run


FINAL_STATES = frozenset({State.COMPLETED, State.FAILED, State.EXCEPTION, State.CANCELLED, State.SKIPPED})


def is_final(state: str) -> bool:
    return state in FINAL_STATES


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _single_bootstrapper(value: Any) -> Any:
    # The design note writes `bootstrapper: ["http://..."]`; a one-element list means that URL.
    if isinstance(value, list):
        if len(value) != 1:
            raise ValueError("bootstrapper must be one URL or path (a list of exactly one)")
        return value[0]
    return value


def _is_word(value: str) -> str:
    if not value or "." in value or any(c.isspace() for c in value):
        raise ValueError(f"{value!r} must be non-empty, without dots or spaces")
    return value


Tag = Annotated[str, AfterValidator(_is_word)]

# An identifier infrax made (new_id) or was given: one word, safe in a path, a routing key and a log line.
ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
RUN_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}-[0-9]{1,3}$"
Identifier = Annotated[str, Field(pattern=ID_PATTERN)]
# What may enter from outside, checked where it enters (docs/security.md, "Inputs").
PROJECT_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"  # one word of a routing key, a scope, a path
Project = Annotated[str, Field(pattern=PROJECT_PATTERN, description="letters, digits, `-` and `_`; 1 to 100")]
NO_CONTROL: Final = r"^[^\x00-\x1f\x7f]*$"
FileName = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00\r\n]+$")]
EnvName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
EnvValue = Annotated[str, Field(max_length=32768, pattern=r"^[^\x00]*$")]
Argument = Annotated[str, Field(max_length=32768, pattern=r"^[^\x00]*$")]
MAX_FILES_PER_TASK: Final = 100_000
MAX_RERUN_TESTS: Final = 500  # failing tests a re-run names one by one; more: the partition's failing files
MAX_PARTITIONS_PER_REQUEST: Final = 10_000
MAX_FILES_PER_REQUEST: Final = 200_000


def _runnable_bootstrapper(value: str) -> str:
    if not value.startswith(("http://", "https://", "file://", "/")):
        raise ValueError("bootstrapper must be an http(s):// or file:// URL or an absolute path")
    if any(c in value for c in "\x00\r\n"):
        raise ValueError("bootstrapper must not contain NUL or line breaks")
    return value


class Fetch(WireModel):
    """An artifact of a task this one depends on, put in `$INFRAX_FETCHES_DIR` (`fetches/` in the
    run's working directory) before the bootstrapper starts."""

    task: str = Field(min_length=1, max_length=200, description="a task named in `dependsOn`")
    artifact: str = Field(min_length=1, max_length=1024, description="its name, e.g. `dist/app.tar.gz`")


class CheckoutOptions(WireModel):
    """How a partition's checkout of its job's revision is made."""

    sparse: list[Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00\r\n-][^\x00\r\n]*$")]] | None = (
        Field(
            default=None,
            min_length=1,
            max_length=1000,
            description="git: only these paths are written (.gitignore patterns, git's non-cone sparse checkout)",
        )
    )
    depth: int | None = Field(
        default=None,
        ge=1,
        le=100_000,
        description="git: only the last N commits of history (a shallow checkout); Mercurial has no shallow clones",
    )


class TaskDefinition(WireModel):
    """One task as a task request carries it (the design note's Task object)."""

    name: str = Field(min_length=1, max_length=200, pattern=NO_CONTROL)
    files: list[FileName] = Field(default_factory=list, max_length=MAX_FILES_PER_TASK)
    container_tag: Annotated[list[Tag], BeforeValidator(_one_or_many)] = Field(min_length=1, max_length=20)
    bootstrapper: Annotated[str, BeforeValidator(_single_bootstrapper)] = Field(min_length=1, max_length=4096)
    bootstrapper_arguments: list[Argument] = Field(default_factory=list, max_length=1000)
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, max_length=1000)
    max_run_time: float = Field(default=3600.0, gt=0, le=7 * 24 * 3600, description="seconds")
    retries: int = Field(default=2, ge=0, le=20, description="re-runs after an infrastructure loss")
    rerun_failures: int | None = Field(
        default=None,
        ge=0,
        le=5,
        description="automatic re-runs of a failed partition's failing tests (its files when it reported no "
        "tests), each on another container; none given: the installation's `rerun_failures` (2)",
    )
    intermittent: Literal["pass", "fail"] | None = Field(
        default=None,
        description="what a partition whose failures all passed on a re-run ends as: pass (the default) or fail",
    )
    priority: int = Field(default=0, ge=-1000, le=1000, description="higher runs first")
    partitions: Annotated[int, Field(ge=1, le=1000)] | Literal["auto"] | None = Field(
        default=None,
        description="partition count, or auto: the least expected wall time plus the partitions' overheads' share "
        "of the container type (also the default where the installation sets no files_per_partition)",
    )
    files_per_partition: int | None = Field(default=None, ge=1)
    target_wall_time: float | None = Field(
        default=None, gt=0, description="seconds; the optimizer picks the fewest partitions meeting it"
    )
    max_partitions: int = Field(default=64, ge=1, le=1000)
    paths: list[FileName] | None = Field(
        default=None,
        max_length=MAX_FILES_PER_TASK,
        description="source path patterns (.gitignore's) the task depends on; None means everything",
    )
    allow_empty: bool = Field(
        default=False, description="patterns selecting no file skip the task instead of refusing the push"
    )
    file_patterns: dict[FileName, int] | None = Field(
        default=None,
        max_length=1000,
        description="the patterns `files` was selected by (a project's logic sets it), each with the count of "
        "files it took; a task whose patterns took nothing is skipped",
    )
    file_sizes: dict[FileName, Annotated[int, Field(ge=0)]] | None = Field(
        default=None,
        max_length=MAX_FILES_PER_TASK,
        description="bytes of each file at the revision (a project's logic sets it): how the optimizer weighs "
        "files it has no history of",
    )
    depends_on: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list,
        max_length=100,
        description="names of tasks of the same request: this one stays pending until they have ended",
    )
    requires: Literal["all-completed", "all-finished"] = Field(
        default="all-completed",
        description="all-completed: a dependency that did not complete cancels this task; all-finished: "
        "it runs once they have ended, however",
    )
    fetches: list[Fetch] = Field(default_factory=list, max_length=100)
    checkout: bool | CheckoutOptions = Field(
        default=True,
        description="a partition of a job starts in a checkout of the job's revision; false: in an empty directory",
    )


class TaskRequestSubmission(WireModel):
    """Body of `POST /api/v1/task-requests`."""

    job_id: Identifier | None = None
    project: Project = "default"
    revision: str | None = Field(default=None, max_length=100, pattern=NO_CONTROL)
    changed_paths: list[FileName] | None = Field(default=None, max_length=MAX_FILES_PER_REQUEST)
    tasks: list[TaskDefinition] = Field(min_length=1, max_length=1000)
    trusted: bool = Field(
        default=False,
        description="a trusted push: its runs get the project's secrets (needs scheduler:trusted:<project>)",
    )

    @model_validator(mode="after")
    def _within_limits(self) -> TaskRequestSubmission:
        for i, task in enumerate(self.tasks):
            try:
                _runnable_bootstrapper(task.bootstrapper)
            except ValueError as error:
                raise ValueError(f"tasks.{i}.bootstrapper: {error}") from None
        # At most this many partitions can come of it, whatever the optimizer decides.
        partitions = sum(
            min(t.partitions if isinstance(t.partitions, int) else t.max_partitions, max(1, len(t.files)))
            for t in self.tasks
        )
        if partitions > MAX_PARTITIONS_PER_REQUEST:
            raise ValueError(
                f"a task request may make at most {MAX_PARTITIONS_PER_REQUEST} partitions; this one "
                f"may make {partitions} (split it into several requests)"
            )
        files = sum(len(t.files) for t in self.tasks)
        if files > MAX_FILES_PER_REQUEST:
            raise ValueError(f"a task request may name at most {MAX_FILES_PER_REQUEST} files; this one names {files}")
        from infrax.graph import check_graph  # graph.py reads these models

        check_graph(self.tasks)
        return self


class TaskPartition(WireModel):
    """A task restricted to a subset of its files; the unit a container runs."""

    id: str
    task_id: str
    request_id: str
    job_id: str | None
    index: int = Field(description="1-based chunk number, stable for Treeherder symbols")
    count: int
    files: list[str]
    container_type: str
    state: State
    run: int = Field(description="0 for the first attempt, +1 for each re-run")
    priority: int
    expected_duration: float | None = None
    exit_code: int | None = None
    message: str | None = None
    log_url: str | None = None
    container_id: str | None = None
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    failure_reruns: int = Field(default=0, description="of its runs, how many re-ran failing tests")
    intermittent: list[str] | None = Field(
        default=None, description="tests (or files) that failed on a run and passed when run again"
    )
    queue_position: int | None = Field(
        default=None, description="while queued: how many partitions that compete with it start before it (0: next)"
    )
    expected_start: datetime | None = Field(default=None, description="while queued: when it should start")
    expected_end: datetime | None = Field(default=None, description="while queued: when it should end")


class Task(WireModel):
    id: str
    request_id: str
    job_id: str | None
    name: str
    state: State
    message: str | None = None
    definition: TaskDefinition
    partitions: list[TaskPartition] = Field(default_factory=list)
    explanation: list[str] | None = Field(
        default=None, description="how the optimizer planned it, decision by decision"
    )


class TaskRequest(WireModel):
    id: str
    job_id: str | None
    project: str
    revision: str | None
    state: State
    message: str | None = None
    created_at: datetime
    tasks: list[Task] = Field(default_factory=list)


class ContainerType(WireModel):
    """A kind of container the provisioner can start, and its rules."""

    name: Tag
    tags: list[Tag] = Field(min_length=1)
    providers: list[str] = Field(default_factory=lambda: ["process"], min_length=1)
    max_concurrent: int = Field(default=4, ge=1)
    min_warm: int = Field(default=0, ge=0)
    idle_timeout: float = Field(default=300.0, ge=0, description="seconds an idle container lives")
    max_partitions: int | None = Field(default=None, ge=1, description="per container, then replaced")
    max_age: float | None = Field(default=None, gt=0, description="seconds, then replaced")
    image: str | None = None
    cpus: float | None = Field(default=None, gt=0)
    memory: str | None = Field(default=None, description="e.g. 512m")
    overhead: float = Field(default=0.0, ge=0, description="seconds of start-up per partition")
    isolation: Literal["tenant", "run"] = Field(
        default="tenant",
        description="what one container serves: `tenant`, the runs of one project at one trust level (a "
        "trusted push's or a pull request's), reused among them; `run`, one run and then replaced",
    )


def pick_container_type(tags: list[str], types: list[ContainerType]) -> ContainerType | None:
    """The first configured type carrying every requested tag (or named like the one tag asked for)."""
    wanted = set(tags)
    return next((t for t in types if wanted <= set(t.tags) or wanted == {t.name}), None)


class ContainerState(StrEnum):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"


class Container(WireModel):
    id: str
    type: str
    provider: str
    host: str
    port: int
    state: ContainerState
    partitions_run: int = 0
    created_at: datetime
    current_run: str | None = None
    age: float = Field(default=0.0, description="seconds since the container was asked for")
    last_heartbeat: datetime | None = Field(default=None, description="when its agent last answered a heartbeat")
    heartbeat_failures: int = Field(default=0, description="heartbeats failed in a row since then")
    tenant: str | None = Field(
        default=None, description="`<project>/trusted` or `<project>/untrusted`: whose runs it serves; none yet"
    )


class PlannedPartition(WireModel):
    index: int
    files: list[str]
    expected_duration: float | None = None


class PlannedTask(WireModel):
    """The optimizer's decision for the task at the same position in the request."""

    position: int
    name: str
    container_type: str | None
    skipped: bool = False
    reason: str | None = None
    priority: int = 0
    partitions: list[PlannedPartition] = Field(default_factory=list)
    expected_makespan: float | None = Field(
        default=None, description="seconds: the longest partition's estimate plus the container type's overhead"
    )
    explanation: list[str] | None = Field(default=None, description="why, decision by decision (explain=true)")


class ExecutionPlan(WireModel):
    tasks: list[PlannedTask]
    dispatch_order: list[tuple[int, int]] = Field(
        default_factory=list, description="(task position, partition index) in dispatch order"
    )
    expected_makespan: float | None = None
    explanation: list[str] | None = None


class PlanRequest(WireModel):
    """Body of the optimizer's `POST /api/v1/plans`."""

    project: str = "default"
    tasks: list[TaskDefinition] = Field(min_length=1)
    container_types: list[ContainerType]
    changed_paths: list[str] | None = None


class FetchSource(WireModel):
    """Where a fetch's artifact is: the runs of its task's partitions that completed, in index order
    (the first that has it gives it)."""

    task: str
    artifact: str
    run_ids: list[str] = Field(max_length=1000)


class PartitionOffer(WireModel):
    """What the scheduler offers the provisioner: one run of one partition."""

    run_id: str = Field(pattern=RUN_ID_PATTERN, description="`<partitionId>-<run>`, and nothing else")
    partition_id: Identifier
    task_id: Identifier
    request_id: Identifier
    job_id: Identifier | None
    task_name: str
    index: int
    count: int
    run: int = Field(ge=0, le=999)
    container_type: str
    files: list[str]
    bootstrapper: str
    bootstrapper_arguments: list[str]
    env: dict[str, str]
    max_run_time: float
    project: str = "default"
    revision: str | None = None
    trusted: bool = False  # its request's: the executioner adds the project's secrets to its environment
    run_token: str | None = Field(
        default=None, max_length=2000, description="the scheduler's token of this very run (infrax.auth.runs)"
    )
    fetches: list[FetchSource] = Field(default_factory=list, max_length=100)
    checkout: CheckoutOptions | None = Field(default=None, description="its job's revision to check out, and how")
    tests: list[str] | None = Field(
        default=None,
        max_length=MAX_RERUN_TESTS,
        description="a re-run of failures: only these tests (or files), the bootstrapper's arguments "
        "instead of `files`",
    )
    avoid_container: str | None = Field(
        default=None, max_length=100, description="a re-run of failures: not on this container, where they failed"
    )

    @model_validator(mode="after")
    def _run_id_names_the_run(self) -> PartitionOffer:
        if self.run_id != run_id_of(self.partition_id, self.run):
            raise ValueError(f"runId must be {run_id_of(self.partition_id, self.run)!r} (partitionId-run)")
        return self


class OfferAnswer(WireModel):
    run_id: str
    accepted: bool
    reason: str | None = None


class ExecutionAssignment(WireModel):
    """What the provisioner hands the executioner: a run and the container to run it on."""

    offer: PartitionOffer
    container_id: str = Field(max_length=200)
    host: str = Field(max_length=300)
    port: int = Field(ge=0, le=65535)
    secret: str = Field(max_length=200)


class ContainerAccess(WireModel):
    """How to reach the container that runs a run: what an executioner asks for after its own
    restart, to re-attach to the runs it had (their assignments' secrets are never stored)."""

    run_id: str = Field(max_length=200)
    container_id: str = Field(max_length=200)
    host: str = Field(max_length=300)
    port: int = Field(ge=0, le=65535)
    secret: str = Field(max_length=200)


class Release(WireModel):
    """The executioner is done with a container: the provisioner reuses or retires it."""

    container_id: str
    run_id: str | None = None
    healthy: bool = True
    reason: str | None = None


def run_id_of(partition_id: str, run: int) -> str:
    return f"{partition_id}-{run}"


class JobTask(WireModel):
    id: str
    name: str
    state: State
    message: str | None = None


class Job(WireModel):
    """One revision of one project under test (Treeherder's push / result set)."""

    id: str
    project: str
    revision: str
    repository: str
    source: str = Field(description="what started it: cli, github, hg, ...")
    state: State
    request_id: str | None = None
    message: str | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    updated_at: datetime
    tasks: list[JobTask] = Field(default_factory=list)


class CancelReason(WireModel):
    """Body of a cancel (optional): why, as the cancelled partitions', tasks' and job's message."""

    reason: str | None = Field(default=None, max_length=500, pattern=NO_CONTROL)


class PushSubmission(WireModel):
    """Body of the job master's `POST /api/v1/pushes`: a revision of a repository to test."""

    repository: str = Field(min_length=1, max_length=1000, pattern=NO_CONTROL, description="a local path or clone URL")
    revision: str = Field(default="HEAD", min_length=1, max_length=200, pattern=NO_CONTROL)
    branch: str | None = Field(default=None, max_length=200, pattern=NO_CONTROL)
