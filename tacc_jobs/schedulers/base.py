"""The one small interface every cluster backend implements, and the models it speaks."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from pydantic import BaseModel, Field

from tacc_jobs.models import JobStatus

SACCT_FIELDS = (
    "JobID",
    "User",
    "Account",
    "Partition",
    "State",
    "ExitCode",
    "Submit",
    "Eligible",
    "Start",
    "End",
    "Elapsed",
    "Timelimit",
    "NNodes",
    "AllocTRES",
    "TRESUsageInTot",
    "MaxRSS",
    "JobName",
)
"""The accounting fields every backend reports, in this order (`sacct --format`). JobName, the
one free-text field, comes last, so a name holding the delimiter cannot shift the others."""


def sacct_rows(lines: Iterable[str]) -> Iterator[list[str]]:
    """`sacct --parsable2` output lines as rows of `SACCT_FIELDS`.

    Each line is split at most `len(SACCT_FIELDS) - 1` times, so a `|` in the job name (the last
    field) stays in the name. A line with fewer delimiters than a row needs is the rest of the
    previous row's name, which held a newline (sacct prints names raw), and is joined back.

    Example:
        >>> line = "7|jdoe|acct|gpu-a100|COMPLETED|0:0" + "|2026-11-01T10:00:00" * 4 + "|00:01:00|01:00:00|1|node=1|||a|b"
        >>> [row[-1] for row in sacct_rows([line, "c|d"])]
        ['a|b\\nc|d']
    """
    splits = len(SACCT_FIELDS) - 1
    row: list[str] | None = None
    for line in lines:
        if row is not None and line.count("|") < splits:
            row[-1] += "\n" + line
            continue
        if row is not None:
            yield row
        row = line.split("|", splits)
    if row is not None:
        yield row


class JobSubmission(BaseModel):
    """A rendered job script and where and how to submit it."""

    name: str = Field(description="Slurm job name; carries the job's idempotency key")
    script: str
    work_dir: str = Field(description="Per-job directory on the cluster; the script is written there")
    stdout_path: str
    stderr_path: str
    sbatch_args: list[str] = Field(description="Planned options, e.g. ['-p', 'gpu-a100', '-N', '2', ...]")
    not_before: datetime | None = Field(
        default=None, description="When the job was recorded: a look-up by name need not look earlier (a day when None)"
    )
    agent: str | None = Field(default=None, description="The agent: the app a Tapis job runs (Slurm runs the script)")
    env: dict[str, str] = Field(default_factory=dict, description="The agent's environment (the script exports it too)")
    inputs: dict[str, str] = Field(default_factory=dict, description="Input name -> source URL that Tapis stages in")
    webhook_url: str | None = Field(default=None, description="Where Tapis posts the job's status changes")
    files: dict[str, str] = Field(
        default_factory=dict,
        description="Further files (absolute path -> text) written under the name's lock before sbatch: a packed allocation's manifest and member scripts",
    )


class SchedulerJobState(BaseModel):
    """A job as the scheduler reports it, in Slurm's words."""

    job_id: str
    name: str | None = Field(default=None, description="The job name (the idempotency key), where the answer gives it")
    state: str = Field(description="Slurm state, e.g. PENDING, RUNNING, 'CANCELLED by 1000'")
    reason: str | None = Field(default=None, description="Pending reason, e.g. Resources, Priority")
    exit_code: str | None = Field(default=None, description="Slurm's 'code:signal', e.g. '3:0'")
    start: datetime | None = None
    end: datetime | None = None
    submit: datetime | None = Field(default=None, description="When the job (this attempt) was submitted")
    in_queue: bool = Field(
        default=False,
        description="Whether the controller still holds the job (squeue lists it): an end it shows may be followed by a requeue",
    )
    status: JobStatus | None = Field(
        default=None, description="The store's status, when the backend maps its own states (Tapis); else from `state`"
    )


class QueueResources(BaseModel):
    """How busy one queue is right now."""

    queue: str
    nodes_total: int
    nodes_allocated: int
    nodes_idle: int
    gpus_idle: int


class FileTail(BaseModel):
    """What a file held past a given offset, and the offset to read from next time."""

    data: str
    next_offset: int


class JobsSnapshot(BaseModel):
    """What one poll of many jobs saw: their states and their files."""

    states: dict[str, SchedulerJobState] = Field(description="As `Scheduler.states` answers")
    files: dict[str, FileTail] = Field(
        description="As `Scheduler.read_files` answers, and the result files of ended jobs"
    )


class Scheduler(Protocol):
    """Submit, observe many jobs at once, cancel, account and show resources.

    Every method is one round trip to the cluster, whatever the number of jobs. A job's identity
    is (system, scheduler job id, job name): ids repeat after a controller reset, names do not.
    """

    scratch_root: str

    def submit(self, job: JobSubmission) -> str:
        """Write the script into `job.work_dir` (and `job.files`, under the name's lock), submit it,
        return the scheduler's job id."""

    def states(self, jobs: Mapping[str, str]) -> dict[str, SchedulerJobState]:
        """The state of every job (scheduler job id -> job name), in one call; a job the scheduler
        does not know, or knows only under another name (a reused id), is left out."""

    def poll(
        self, jobs: Mapping[str, str], offsets: Mapping[str, int], results: Mapping[str, str], limit: int = 65536
    ) -> JobsSnapshot:
        """What a tracker asks each time, in one call: `states(jobs)`, `read_files(offsets, limit)`,
        and whole, for each job the answer shows ended, its result file (`results`: job id -> path)."""

    def find(self, names: Sequence[str], since: datetime) -> dict[str, SchedulerJobState]:
        """The first job of each name submitted since `since`, in one call; names with none are left
        out. (The orchestrator submits a name once: a later job of it is a copy run by hand.)"""

    def abandon(self, name: str, work_dir: str, since: datetime) -> SchedulerJobState | None:
        """Make sure no job of this name will run untracked: the job when one was submitted,
        else None, and from then on a submission of the name is refused (atomic with `submit`)."""

    def cancel(self, job_id: str, name: str | None = None) -> None:
        """Cancel a job; cancelling an ended job does nothing. With `name`, only if the job under
        that id has that name (ids repeat: the id of an ended job may be a fresh job's now)."""

    def cancel_member(self, work_dir: str) -> None:
        """Stop one member of a packed allocation (its cancel marker in `work_dir`), not the allocation."""

    def accounting(self, start: datetime, end: datetime) -> Iterator[list[str]]:
        """Accounting rows of the jobs in `[start, end)`, streamed: the `SACCT_FIELDS` as
        `sacct --parsable2 --duplicates` prints them (times in UTC, job steps as rows of their own,
        every attempt of a requeued job). The window is sacct's without `--state`: every job
        eligible before `end` that had not ended before `start`, so a job that ended in the window
        is in it however long ago it was submitted."""

    def resources(self) -> list[QueueResources]:
        """Allocated and idle nodes and idle GPUs per queue."""

    def read_files(self, offsets: Mapping[str, int], limit: int = 65536) -> dict[str, FileTail]:
        """Read each file from its offset (at most `limit` bytes, the newest kept), in one call."""
