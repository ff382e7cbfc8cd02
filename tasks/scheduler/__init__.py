"""The scheduler interface and its implementations (the embedded local cluster; Slurm over SSH)."""

from tasks.scheduler.base import (
    AccountingRow,
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
    "AccountingRow",
    "FileTail",
    "JobSubmission",
    "PermanentSchedulerError",
    "QueueResources",
    "Scheduler",
    "SchedulerError",
    "SchedulerJobState",
    "TransientSchedulerError",
]
