"""Scheduler states (Slurm's, Tapis's) mapped to the store's status and reason."""

from __future__ import annotations

from collections.abc import Mapping

from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.base import JobsSnapshot, Scheduler, SchedulerJobState

SHORT_CODES = {
    "PD": "PENDING",
    "CF": "CONFIGURING",
    "R": "RUNNING",
    "CG": "COMPLETING",
    "CD": "COMPLETED",
    "F": "FAILED",
    "CA": "CANCELLED",
    "TO": "TIMEOUT",
    "NF": "NODE_FAIL",
    "PR": "PREEMPTED",
    "OOM": "OUT_OF_MEMORY",
    "BF": "BOOT_FAIL",
    "DL": "DEADLINE",
    "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD",
    "RF": "REQUEUE_FED",
    "S": "SUSPENDED",
    "SO": "STAGE_OUT",
    "SI": "SIGNALING",
    "RS": "RESIZING",
    "RV": "REVOKED",
    "SE": "SPECIAL_EXIT",
    "ST": "STOPPED",
    "RD": "RESV_DEL_HOLD",
}
WAITING_STATES = frozenset(
    {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
)
"""States of a job that waits, requeued ones included: SPECIAL_EXIT is a job held for requeue."""
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED", "STOPPED"})
MAY_BE_REQUEUED = frozenset({"NODE_FAIL", "PREEMPTED"})
"""Ends Slurm requeues by default: final only once the controller no longer holds the job."""
_FAILED_WITH_OWN_REASON = {"TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED"}


def map_slurm_state(
    state: str, exit_code: str | None = None, reason: str | None = None, in_queue: bool = False
) -> tuple[JobStatus | None, str | None]:
    """Map a Slurm state (long form, short code, or `CANCELLED by <uid>`) to status and reason.

    A state this mapping does not know gives no status (the job keeps the one it has: it is
    never ended on a guess) and a reason quoting Slurm's raw text.

    Args:
        state: Slurm's state text.
        exit_code: Slurm's `code:signal`.
        reason: Slurm's pending reason.
        in_queue: The controller still holds the job (squeue lists it), so NODE_FAIL or
            PREEMPTED may be followed by a requeue: the job is waiting, not ended.

    Example:
        >>> map_slurm_state("FAILED", "3:0")
        (<JobStatus.FAILED: 'FAILED'>, 'exit code 3')
        >>> map_slurm_state("CANCELLED by 1000")
        (<JobStatus.CANCELLED: 'CANCELLED'>, 'cancelled by uid 1000')
        >>> map_slurm_state("PD", reason="QOSMaxJobsPerUserLimit")
        (<JobStatus.QUEUING: 'QUEUING'>, 'QOSMaxJobsPerUserLimit')
        >>> map_slurm_state("NODE_FAIL", in_queue=True)
        (<JobStatus.QUEUING: 'QUEUING'>, 'NODE_FAIL: Slurm may requeue it')
        >>> map_slurm_state("LAUNCH_FAILED")
        (None, "unknown Slurm state 'LAUNCH_FAILED'")
    """
    words = state.strip().split()
    if not words:
        return None, "empty Slurm state"
    name = SHORT_CODES.get(words[0], words[0].rstrip("+"))
    if name in WAITING_STATES:
        pending_reason = reason if reason and reason not in {"None", "(null)"} else None
        return JobStatus.QUEUING, pending_reason if name == "PENDING" else name
    if name in RUNNING_STATES:
        return JobStatus.RUNNING, "SUSPENDED" if name in {"SUSPENDED", "STOPPED"} else None
    if name in MAY_BE_REQUEUED and in_queue:
        return JobStatus.QUEUING, f"{name}: Slurm may requeue it"
    if name == "COMPLETED":
        return JobStatus.COMPLETED, None
    if name == "CANCELLED":
        by = words[2] if len(words) >= 3 and words[1] == "by" else None
        return JobStatus.CANCELLED, f"cancelled by uid {by}" if by else "cancelled"
    if name == "FAILED":
        return JobStatus.FAILED, _exit_reason(exit_code)
    if name in _FAILED_WITH_OWN_REASON:
        return JobStatus.FAILED, name
    return None, f"unknown Slurm state {state.strip()!r}"


def _exit_reason(exit_code: str | None) -> str:
    if not exit_code:
        return "FAILED"
    code, _, signal = exit_code.partition(":")
    if signal and signal != "0":
        return f"killed by signal {signal}"
    return f"exit code {code}"


TAPIS_WAITING_STATUSES = frozenset(
    {"PENDING", "PROCESSING_INPUTS", "STAGING_INPUTS", "STAGING_JOB", "SUBMITTING_JOB", "QUEUED"}
)
TAPIS_HELD_STATUSES = frozenset({"BLOCKED", "PAUSED"})
_TAPIS_FAILED_CONDITIONS = {
    "SCHEDULER_TIMEOUT": "TIMEOUT",
    "SCHEDULER_OUT_OF_MEMORY": "OUT_OF_MEMORY",
    "SCHEDULER_DEADLINE": "DEADLINE",
    "SCHEDULER_CANCELLED": "cancelled by the scheduler",
    "SCHEDULER_STOPPED": "stopped by the scheduler",
    "SCHEDULER_TERMINATED": "terminated by the scheduler",
}


def map_tapis_status(
    status: str,
    condition: str | None = None,
    message: str | None = None,
    started: bool = False,
    exit_code: str | None = None,
) -> tuple[JobStatus | None, str | None]:
    """Map a Tapis job status (and its condition, last message, exit code) to status and reason.

    The reason is Tapis's own word for the status (the store keeps a reason until a new one
    comes), with the detail that matters: the failure's cause, the hold's message. The statuses
    before QUEUED are Tapis's own steps (inputs, staging, submission): the job waits. BLOCKED (a recoverable fault, e.g. the login node unreachable) and PAUSED are not
    failures: the job keeps the status it had (queued or running) with the reason.

    Example:
        >>> map_tapis_status("STAGING_INPUTS")
        (<JobStatus.QUEUING: 'QUEUING'>, 'STAGING_INPUTS')
        >>> map_tapis_status("BLOCKED", message="SSH connection lost", started=True)
        (<JobStatus.RUNNING: 'RUNNING'>, 'BLOCKED: SSH connection lost')
        >>> map_tapis_status("FAILED", "JOB_REMOTE_OUTCOME_ERROR", exit_code="3:0")
        (<JobStatus.FAILED: 'FAILED'>, 'exit code 3')
        >>> map_tapis_status("FAILED", "SCHEDULER_TIMEOUT")
        (<JobStatus.FAILED: 'FAILED'>, 'TIMEOUT')
    """
    if status in TAPIS_WAITING_STATUSES:
        return JobStatus.QUEUING, status
    if status == "RUNNING":
        return JobStatus.RUNNING, "RUNNING"
    if status == "ARCHIVING":
        return JobStatus.RUNNING, "ARCHIVING"
    if status in TAPIS_HELD_STATUSES:
        return JobStatus.RUNNING if started else JobStatus.QUEUING, f"{status}: {message}" if message else status
    if status == "FINISHED":
        return JobStatus.COMPLETED, "FINISHED"
    if status == "CANCELLED":
        return JobStatus.CANCELLED, f"cancelled ({condition})" if condition else "cancelled"
    if status == "FAILED":
        if condition in _TAPIS_FAILED_CONDITIONS:
            return JobStatus.FAILED, _TAPIS_FAILED_CONDITIONS[condition]
        if exit_code and exit_code not in {"0", "0:0"}:
            return JobStatus.FAILED, _exit_reason(exit_code)
        return JobStatus.FAILED, ": ".join(part for part in (condition, message) if part) or "FAILED"
    return None, f"unknown Tapis job status {status!r}"


def map_scheduler_state(state: SchedulerJobState) -> tuple[JobStatus | None, str | None]:
    """The store's status and reason of a job as its scheduler reports it: as the backend mapped
    it (Tapis), else from Slurm's state.

    Example:
        >>> map_scheduler_state(SchedulerJobState(job_id="7", state="FAILED", exit_code="3:0"))
        (<JobStatus.FAILED: 'FAILED'>, 'exit code 3')
    """
    if state.status is not None:
        return state.status, state.reason
    return map_slurm_state(state.state, state.exit_code, state.reason, state.in_queue)


def ended_result_offsets(states: dict[str, SchedulerJobState], results: Mapping[str, str]) -> dict[str, int]:
    """The result files to read whole (offset 0) in a poll: those of the jobs whose state is an end.

    Example:
        >>> states = {"7": SchedulerJobState(job_id="7", state="COMPLETED"), "8": SchedulerJobState(job_id="8", state="RUNNING")}
        >>> ended_result_offsets(states, {"7": "/s/7/result.json", "8": "/s/8/result.json", "9": "/s/9/result.json"})
        {'/s/7/result.json': 0}
    """
    ended = {
        job_id for job_id, state in states.items() if (map_scheduler_state(state)[0] or JobStatus.QUEUING).is_terminal
    }
    return {path: 0 for job_id, path in results.items() if job_id in ended}


def poll_in_parts(
    scheduler: Scheduler,
    jobs: Mapping[str, str],
    offsets: Mapping[str, int],
    results: Mapping[str, str],
    limit: int = 65536,
) -> JobsSnapshot:
    """`Scheduler.poll` of a backend that answers states and files apart anyway (on local disk;
    through the Tapis APIs): `states`, then `read_files` with the result files of ended jobs.

    Example:
        ```python
        poll_in_parts(LocalScheduler(root), {"7": "tacc-6f1c..."}, {progress: 0}, {"7": result}).states["7"].state
        ```
    """
    states = scheduler.states(jobs)
    return JobsSnapshot(
        states=states, files=scheduler.read_files({**offsets, **ended_result_offsets(states, results)}, limit)
    )
