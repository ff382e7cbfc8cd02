"""cleanup: remove job records and results past their retention."""

from __future__ import annotations

import posixpath
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from tasks.clusters import scheduler_for, transfer_for
from tasks.retries import cluster_task
from tasks.store import open_job_store


class CleanupSummary(BaseModel):
    """What one cleanup removed."""

    records_removed: int
    work_dirs_removed: int
    dry_run: bool


def remove_work_dir(system: str, work_dir: str) -> bool:
    """Delete a job's directory on its cluster, only if it lies under that cluster's scratch jobs."""
    jobs_root = posixpath.join(scheduler_for(system).scratch_root, "jobs")
    if posixpath.dirname(posixpath.normpath(work_dir)) != jobs_root:
        raise ValueError(f"{work_dir!r} is not a job directory under {jobs_root}")
    transfer_for(system).remove(work_dir)
    return True


@cluster_task
def remove_expired_jobs(default_ttl_days: int, dry_run: bool) -> CleanupSummary:
    """Remove ended jobs past their retention: their results on the cluster, then their records.

    Example:
        ```python
        remove_expired_jobs(30, dry_run=True).records_removed
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    expired = store.expired(default_ttl_days)
    removed_dirs = 0
    for record in expired:
        logger.info("%s job %s (%s, ended %s)", "Would remove" if dry_run else "Removing", record.id, record.status.value,
                    record.completed_at or record.updated_at)
        if not dry_run and record.work_dir:
            removed_dirs += remove_work_dir(record.system, record.work_dir)
    removed = 0 if dry_run else store.delete([record.id for record in expired])
    return CleanupSummary(records_removed=removed if not dry_run else len(expired), work_dirs_removed=removed_dirs, dry_run=dry_run)


@flow(name="cleanup")
def cleanup_expired(default_ttl_days: Annotated[int, Field(ge=1)] = 30, dry_run: bool = False) -> CleanupSummary:
    """Remove job records and results older than their TTL (default 30 days; a job's own
    `retention_days` overrides it). Deployed daily.

    Example:
        ```python
        from flows.cleanup import cleanup_expired
        cleanup_expired(dry_run=True)
        ```
    """
    return remove_expired_jobs(default_ttl_days, dry_run)
