"""The scheduler interface and its implementations (the embedded local cluster; Slurm over SSH)."""

from tasks.scheduler.base import (
    SACCT_FIELDS,
    FileTail,
    JobSubmission,
    PermanentSchedulerError,
    QueueResources,
    Scheduler,
    SchedulerError,
    SchedulerJobState,
    TransientSchedulerError,
)

__all__ = [
    "FileTail",
    "JobSubmission",
    "SACCT_FIELDS",
    "PermanentSchedulerError",
    "QueueResources",
    "Scheduler",
    "SchedulerError",
    "SchedulerJobState",
    "TransientSchedulerError",
]
