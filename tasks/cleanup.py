"""Removing what has passed its retention: job records, their directories on the cluster, and
the results Prefect persisted for their flow runs."""

from __future__ import annotations

import posixpath
import uuid

from prefect import get_run_logger
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel

from blocks.clusters import scheduler_for, transfer_for
from blocks.database import open_job_store
from tacc_jobs.models import JobRecord
from tacc_jobs.schedulers.job_script import allocation_dir
from tacc_jobs.store import JobStore
from tasks.policies import cluster_task
from tasks.run_results import persisted_result_files


class CleanupSummary(BaseModel):
    """What one cleanup removed."""

    records_removed: int
    work_dirs_removed: int
    results_removed: int
    allocation_dirs_removed: int = 0
    dry_run: bool


def remove_work_dir(system: str, work_dir: str) -> bool:
    """Delete a job's directory on its cluster, only if it lies under that cluster's scratch jobs."""
    jobs_root = posixpath.join(scheduler_for(system).scratch_root, "jobs")
    if posixpath.dirname(posixpath.normpath(work_dir)) != jobs_root:
        raise ValueError(f"{work_dir!r} is not a job directory under {jobs_root}")
    transfer_for(system).remove(work_dir)
    return True


def remove_allocation_dir(system: str, name: str) -> bool:
    """Delete a packed allocation's directory (its script, manifest, launcher and logs) on its cluster."""
    transfer_for(system).remove(allocation_dir(scheduler_for(system).scratch_root, name))
    return True


def remove_run_results(client: SyncPrefectClient, flow_run_id: uuid.UUID, dry_run: bool) -> int | None:
    """Remove the results Prefect persisted for one flow run and its task runs.

    Returns:
        How many result files were removed (would be, in a dry run); None when the run's jobs
        must wait for a later cleanup: the run has not ended, or its results could not be
        removed (their records are the only way back to their results).
    """
    logger = get_run_logger()
    try:
        flow_run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:  # the server no longer knows the run: nothing to find
        return 0
    if flow_run.state is None or not flow_run.state.is_final():
        logger.warning(
            "Flow run %s has not ended (%s): its jobs are kept for now",
            flow_run.name,
            flow_run.state.name if flow_run.state else "no state",
        )
        return None
    try:
        files = persisted_result_files(client, flow_run)
        for file in files:
            if file.filesystem is None:
                logger.warning("Kept result %s of flow run %s: %s", file.storage_key, flow_run.name, file.kept_because)
            elif not dry_run:
                file.delete()
    except Exception as error:  # one run's storage failing does not stop the cleanup
        logger.warning(
            "Could not remove the results of flow run %s: %s; its jobs are kept for now", flow_run.name, error
        )
        return None
    return sum(file.filesystem is not None for file in files)


def remove_persisted_results(store: JobStore, expired: list[JobRecord], dry_run: bool) -> tuple[int, set[uuid.UUID]]:
    """Remove the results Prefect persisted for the flow runs of expired jobs, for each ended
    flow run all of whose jobs expired (a batch run's results stay while one of its jobs is kept).

    Args:
        store: The job store.
        expired: The jobs past their retention.
        dry_run: Count the files, remove nothing.

    Returns:
        How many result files were removed (would be, in a dry run), and the flow runs whose
        jobs must wait for a later cleanup (see `remove_run_results`).
    """
    expired_ids = {record.id for record in expired}
    jobs_by_run = store.job_ids_by_flow_run(
        {record.flow_run_id for record in expired if record.flow_run_id is not None}
    )
    removed, deferred = 0, set()
    with get_client(sync_client=True) as client:
        for flow_run_id in (run for run, job_ids in jobs_by_run.items() if job_ids <= expired_ids):
            count = remove_run_results(client, flow_run_id, dry_run)
            if count is None:
                deferred.add(flow_run_id)
            else:
                removed += count
    return removed, deferred


@cluster_task
def remove_expired_jobs(default_ttl_days: int, dry_run: bool) -> CleanupSummary:
    """Remove ended jobs past their retention: the results Prefect persisted for their flow
    runs, their directories on the cluster, then their records.

    Example:
        ```python
        remove_expired_jobs(30, dry_run=True).records_removed
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    expired = store.expired(default_ttl_days)
    results_removed, deferred = remove_persisted_results(store, expired, dry_run)
    expired = [record for record in expired if record.flow_run_id not in deferred]
    removed_dirs = 0
    for record in expired:
        logger.info(
            "%s job %s (%s, ended %s)",
            "Would remove" if dry_run else "Removing",
            record.id,
            record.status.value,
            record.completed_at or record.updated_at,
        )
        if not dry_run and record.work_dir:
            removed_dirs += remove_work_dir(record.system, record.work_dir)
    removed = len(expired) if dry_run else store.delete([record.id for record in expired])
    allocations = sorted({(record.system, record.allocation_name) for record in expired if record.allocation_name})
    removed_allocations = (
        0
        if dry_run
        else sum(
            remove_allocation_dir(system, name) for system, name in allocations if not store.allocation_members(name)
        )
    )  # its last member is gone
    return CleanupSummary(
        records_removed=removed,
        work_dirs_removed=removed_dirs,
        results_removed=results_removed,
        allocation_dirs_removed=removed_allocations,
        dry_run=dry_run,
    )
