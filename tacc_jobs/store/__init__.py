"""The project's database: jobs with their history, and dataset staging, in SQLite or PostgreSQL."""

from tacc_jobs.store.jobs import JobStore, JobUpdate, Transition
from tacc_jobs.store.schema import migrate
from tacc_jobs.store.staging import DatasetStaging, StagingStatus, StagingStore

__all__ = ["DatasetStaging", "JobStore", "JobUpdate", "StagingStatus", "StagingStore", "Transition", "migrate"]
