"""The scheduler interface and its implementations: the embedded local cluster
(`local`) and Slurm over SSH (`slurm`)."""

from tacc_jobs.schedulers.base import (
    SACCT_FIELDS,
    FileTail,
    JobsSnapshot,
    JobSubmission,
    QueueResources,
    Scheduler,
    SchedulerJobState,
)

__all__ = [
    "FileTail",
    "JobSubmission",
    "JobsSnapshot",
    "SACCT_FIELDS",
    "QueueResources",
    "Scheduler",
    "SchedulerJobState",
]
