"""Pydantic models at the project's boundaries: the job request, the plan and the job record."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from enum import Enum
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    HttpUrl,
    PlainSerializer,
    ValidationError,
    model_validator,
)

from tacc_jobs.exceptions import InvalidJobRequest
from tacc_jobs.walltime import format_walltime, parse_walltime


def _identifier(pattern: str, allowed: str) -> AfterValidator:
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value) or ".." in value:
            raise ValueError(f"{value!r} is not allowed; use {allowed}")
        return value

    return AfterValidator(check)


AgentName = Annotated[
    str,
    _identifier(r"[A-Za-z][A-Za-z0-9_-]{0,63}", "a letter then letters, digits, '_' or '-' (max 64), e.g. 'AlphaCal'"),
]
DatasetId = Annotated[
    str,
    _identifier(
        r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}",
        "letters, digits, '.', '_' or '-' starting with a letter or digit, no '..' (max 128), e.g. 'VLASS2.1.eb123456'",
    ),
]
UserId = Annotated[
    str,
    _identifier(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", "letters, digits, '.', '_' or '-' (max 64), e.g. 'jdoe'"),
]
QueueName = Annotated[
    str, _identifier(r"[a-z0-9][a-z0-9-]{0,31}", "lower-case letters, digits and '-', e.g. 'gpu-a100'")
]


def _positive(duration: timedelta) -> timedelta:
    if duration <= timedelta(0):
        raise ValueError("a wall time must be longer than zero")
    return duration


WallTime = Annotated[
    timedelta,
    BeforeValidator(lambda value: parse_walltime(value) if isinstance(value, str) else value),
    AfterValidator(_positive),
    PlainSerializer(format_walltime, return_type=str),
]
_PARAM_KEY = re.compile(r"[a-z][a-z0-9_]{0,31}")


class System(str, Enum):
    """Where a job runs: the embedded local cluster or a TACC system."""

    LOCAL = "local"
    LS6 = "ls6"
    FRONTERA = "frontera"
    STAMPEDE3 = "stampede3"
    VISTA = "vista"


class RfiStrategy(str, Enum):
    """How aggressively radio-frequency interference is flagged."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    HIGH_SENSITIVITY = "high_sensitivity"


class Priority(str, Enum):
    """Scheduling priority of a request inside the orchestrator."""

    NORMAL = "normal"
    HIGH = "high"


class JobStatus(str, Enum):
    """A job's status in the store: QUEUED -> QUEUING -> RUNNING -> a terminal status. The words
    are those of seed 001's job API, which the portal reads as they are.

    QUEUED and QUEUING differ in who holds the job: QUEUED is ours (planned and recorded, not yet
    in the scheduler: staging, waiting for a per-user slot, or its submission unconfirmed);
    QUEUING is the scheduler's (submitted, with a scheduler job id, waiting in its queue, Slurm's
    PENDING, or requeued). A job's `reason` says why it is where it is.
    """

    QUEUED = "QUEUED"
    """Recorded, not yet submitted: no scheduler job id."""
    QUEUING = "QUEUING"
    """Submitted, waiting in the scheduler's queue (Slurm PENDING, or requeued)."""
    RUNNING = "RUNNING"
    """Started on its nodes (Slurm RUNNING, COMPLETING)."""
    COMPLETED = "COMPLETED"
    """Ended with exit code 0; its result and charge are recorded."""
    FAILED = "FAILED"
    """Ended otherwise: a non-zero exit, a time-out, a node failure, a refusal, or lost."""
    CANCELLED = "CANCELLED"
    """Ended by an explicit cancel (never by a crash of the orchestrator)."""

    @property
    def is_terminal(self) -> bool:
        """Whether the job has ended."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.QUEUING, JobStatus.RUNNING})


class JobParams(BaseModel):
    """Parameters handed to the agent. `rfi_strategy` is known; other keys pass through as scalars."""

    model_config = ConfigDict(extra="allow")

    rfi_strategy: RfiStrategy = RfiStrategy.MEDIUM

    @model_validator(mode="after")
    def _check_extra(self) -> JobParams:
        """Extra keys are short snake_case names with scalar values."""
        for key, value in (self.model_extra or {}).items():
            if not _PARAM_KEY.fullmatch(key):
                raise ValueError(f"{key!r} is not allowed; parameter names are snake_case, max 32 characters")
            if not isinstance(value, (str, int, float, bool)) or (isinstance(value, str) and len(value) > 256):
                raise ValueError(f"{key}: values are strings (max 256 characters), numbers or booleans")
        return self


class JobRequest(BaseModel):
    """What a portal or a researcher asks for: one GPU job of one agent on one dataset.

    Example:
        ```python
        JobRequest(agent="AlphaCal", dataset_id="VLASS2.1.eb123456", gpu_count=2,
                   max_runtime="02:00:00", user_id="jdoe", system="ls6")
        ```
    """

    model_config = ConfigDict(extra="forbid")

    agent: AgentName
    dataset_id: DatasetId
    params: JobParams = Field(default_factory=JobParams)
    gpu_count: int = Field(ge=1, le=1024)
    max_runtime: WallTime
    user_id: UserId
    system: System = System.LOCAL
    queue: QueueName | None = None
    webhook_url: HttpUrl | None = None
    priority: Priority = Priority.NORMAL
    retention_days: int | None = Field(
        default=None, ge=1, le=3650, description="Keep the record and results this long after the job ends (default 30)"
    )
    exclusive: bool = Field(
        default=False, description="Run alone: never packed with other requests into one allocation or array"
    )


def parse_request(data: JobRequest | dict[str, Any]) -> JobRequest:
    """Validate a request, turning pydantic's error into one readable message.

    Example:
        >>> parse_request({"agent": "AlphaCal", "dataset_id": "d1", "gpu_count": 0,
        ...                "max_runtime": "1h", "user_id": "jdoe"})
        Traceback (most recent call last):
        tacc_jobs.exceptions.InvalidJobRequest: invalid job request: gpu_count: Input should be greater than or equal to 1 (got 0)
    """
    if isinstance(data, JobRequest):
        return data
    try:
        return JobRequest.model_validate(data)
    except ValidationError as error:
        raise InvalidJobRequest(describe_validation_error(error)) from None


def describe_validation_error(error: ValidationError) -> str:
    """One line per problem: `field: what is wrong (got value)`."""
    problems = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"]) or "request"
        message = item["msg"].removeprefix("Value error, ")
        got = f" (got {item['input']!r})" if item["type"] not in {"missing", "value_error"} else ""
        problems.append(f"{field}: {message}{got}")
    return "invalid job request: " + "; ".join(problems)


class Plan(BaseModel):
    """How a request will run: queue, whole nodes, directives, estimates and tips."""

    system: System
    host: str
    queue: str
    gpu_model: str
    nodes: int
    gpus_per_node: int
    gpu_count: int
    allocated_gpus: int
    wall_time: WallTime
    account: str | None = None
    sbatch_args: list[str] = Field(description="sbatch options as an argv list (never --gres)")
    estimated_su: float = Field(description="SUs if the job runs its full wall time")
    estimated_cost_usd: float
    expected_runtime_minutes: float | None = Field(
        default=None, description="Median runtime of this user's earlier runs of the agent"
    )
    staging_estimate_seconds: float | None = Field(default=None, description="Expected dataset transfer time")
    tips: list[str] = Field(default_factory=list)
    based_on: list[str] = Field(
        default_factory=list,
        description="What the estimates used besides the catalog (a saved block, measured bandwidth)",
    )

    @property
    def sbatch_directives(self) -> list[str]:
        """The `#SBATCH` lines of the job script."""
        return sbatch_directives(self.sbatch_args)


def sbatch_directives(arguments: list[str]) -> list[str]:
    """`#SBATCH` lines of sbatch options given as flag/value pairs.

    Example:
        >>> sbatch_directives(["-p", "h100", "-N", "2"])
        ['#SBATCH -p h100', '#SBATCH -N 2']
    """
    return [f"#SBATCH {flag} {value}" for flag, value in zip(arguments[::2], arguments[1::2])]


class JobRecord(BaseModel):
    """A job as the store keeps it."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    user_id: str
    agent: str
    dataset_id: str
    system: str
    queue: str
    scheduler_job_id: str | None = None
    status: JobStatus
    reason: str | None = None
    progress: float = 0.0
    params: dict[str, Any] = Field(default_factory=dict)
    result: dict[str, Any] | None = None
    notes: str | None = None
    estimated_runtime_minutes: float | None = None
    estimated_su: float | None = None
    charged_su: float | None = None
    gpu_count: int
    nodes: int
    priority: str = Priority.NORMAL.value
    webhook_url: str | None = None
    work_dir: str | None = None
    flow_run_id: uuid.UUID | None = None
    retention_days: int | None = None
    attempt: int = Field(default=1, description="1, then one more each time Slurm requeues the job")
    unseen_since: datetime | None = Field(default=None, description="Since when the scheduler has not reported the job")
    submit_started_at: datetime | None = Field(
        default=None, description="When its submission began (a job may exist from then on)"
    )
    allocation_name: str | None = Field(
        default=None, description="The Slurm job name of the packed allocation it runs in; None for a job of its own"
    )
    allocation_nodes: int | None = Field(default=None, description="Whole nodes of its packed allocation")
    array_index: int | None = Field(
        default=None,
        description="Its task in the job array named `allocation_name` (its scheduler id `<array id>_<index>`); None when not an array member",
    )
    gpu_seconds: float | None = Field(
        default=None, description="GPUs x seconds it ran (a packed member's share of the charge)"
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    completed_at: datetime | None = None

    @property
    def runtime(self) -> timedelta | None:
        """Wall-clock time used so far (until now's last update while it runs), once it has started."""
        if self.started_at is None:
            return None
        end = self.completed_at or self.updated_at
        return end - self.started_at

    @property
    def packed(self) -> bool:
        """Whether it runs as a member of a packed allocation."""
        return self.allocation_name is not None and self.array_index is None

    @property
    def array_member(self) -> bool:
        """Whether it runs as a task of a job array."""
        return self.array_index is not None


class Page(BaseModel):
    """One page of job records."""

    items: list[JobRecord]
    total: int
    has_more: bool
