"""Slurm job states mapped to the store's status and reason."""

from __future__ import annotations

from tacc_jobs.exceptions import UnknownSlurmState
from tacc_jobs.models import JobStatus

SHORT_CODES = {
    "PD": "PENDING", "CF": "CONFIGURING", "R": "RUNNING", "CG": "COMPLETING", "CD": "COMPLETED",
    "F": "FAILED", "CA": "CANCELLED", "TO": "TIMEOUT", "NF": "NODE_FAIL", "PR": "PREEMPTED",
    "OOM": "OUT_OF_MEMORY", "BF": "BOOT_FAIL", "DL": "DEADLINE", "RQ": "REQUEUED",
    "RH": "REQUEUE_HOLD", "RF": "REQUEUE_FED", "S": "SUSPENDED", "SO": "STAGE_OUT", "SI": "SIGNALING",
    "RS": "RESIZING", "RV": "REVOKED", "SE": "SPECIAL_EXIT", "ST": "STOPPED", "RD": "RESV_DEL_HOLD",
}
WAITING_STATES = frozenset({"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD"})
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "STAGE_OUT", "SIGNALING", "RESIZING", "SUSPENDED", "STOPPED"})
_FAILED_WITH_OWN_REASON = {
    "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT",
}


def map_slurm_state(state: str, exit_code: str | None = None, reason: str | None = None) -> tuple[JobStatus, str | None]:
    """Map a Slurm state (long form, short code, or `CANCELLED by <uid>`) to status and reason.

    Example:
        >>> map_slurm_state("FAILED", "3:0")
        (<JobStatus.FAILED: 'FAILED'>, 'exit code 3')
        >>> map_slurm_state("CANCELLED by 1000")
        (<JobStatus.CANCELLED: 'CANCELLED'>, 'cancelled by uid 1000')
        >>> map_slurm_state("PD", reason="QOSMaxJobsPerUserLimit")
        (<JobStatus.QUEUING: 'QUEUING'>, 'QOSMaxJobsPerUserLimit')
    """
    words = state.strip().split()
    if not words:
        raise UnknownSlurmState("empty Slurm state")
    name = SHORT_CODES.get(words[0], words[0].rstrip("+"))
    if name in WAITING_STATES:
        pending_reason = reason if reason and reason not in {"None", "(null)"} else None
        return JobStatus.QUEUING, pending_reason if name == "PENDING" else name
    if name in RUNNING_STATES:
        return JobStatus.RUNNING, "SUSPENDED" if name in {"SUSPENDED", "STOPPED"} else None
    if name == "COMPLETED":
        return JobStatus.COMPLETED, None
    if name == "CANCELLED":
        by = words[2] if len(words) >= 3 and words[1] == "by" else None
        return JobStatus.CANCELLED, f"cancelled by uid {by}" if by else "cancelled"
    if name == "FAILED":
        return JobStatus.FAILED, _exit_reason(exit_code)
    if name in _FAILED_WITH_OWN_REASON:
        return JobStatus.FAILED, name
    raise UnknownSlurmState(f"unknown Slurm state {state!r}")


def _exit_reason(exit_code: str | None) -> str:
    if not exit_code:
        return "FAILED"
    code, _, signal = exit_code.partition(":")
    if signal and signal != "0":
        return f"killed by signal {signal}"
    return f"exit code {code}"
