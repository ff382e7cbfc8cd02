"""The job store: every job with its history, in SQLite (embedded default) or PostgreSQL."""

from tasks.store.repository import IllegalTransition, JobNotFound, JobStore, JobUpdate, Transition
from tasks.store.engine import open_job_store

__all__ = ["IllegalTransition", "JobNotFound", "JobStore", "JobUpdate", "Transition", "open_job_store"]
