"""The project's database: jobs with their history, and dataset staging, in SQLite or PostgreSQL."""

from tasks.store.engine import open_engine
from tasks.store.repository import (
    IllegalTransition,
    JobNotFound,
    JobStore,
    JobUpdate,
    Transition,
)
from tasks.store.schema import migrate
from tasks.store.staging_repository import DatasetStaging, StagingStatus, StagingStore


def open_job_store() -> JobStore:
    """The job store on the configured database (see `open_engine`)."""
    return JobStore(open_engine())


def open_staging_store() -> StagingStore:
    """The staging store on the configured database (see `open_engine`)."""
    return StagingStore(open_engine())


__all__ = [
    "DatasetStaging", "IllegalTransition", "JobNotFound", "JobStore", "JobUpdate", "StagingStatus", "StagingStore",
    "Transition", "migrate", "open_engine", "open_job_store", "open_staging_store",
]
