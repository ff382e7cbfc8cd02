"""Cancelling jobs: in their scheduler and in the store, from a flow, a hook or a sweep."""

from __future__ import annotations

import uuid
from typing import Any

from prefect.client.schemas.objects import Flow, FlowRun, State

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from tacc_jobs.exceptions import IllegalTransition, JobAlreadyEnded
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers import Scheduler
from tacc_jobs.schedulers.job_script import JobPaths, record_job_name, submission_dir
from tacc_jobs.settings import get_settings
from tacc_jobs.store import JobStore, JobUpdate
from tacc_jobs.tracking import NAME_LOOKUP_MARGIN, TrackingPolicy, adopt
from tacc_jobs.walltime import utcnow
from tasks.notifications import announce
from tasks.policies import cluster_task
from tasks.run_context import run_logger


def cancel_stored_job(store: JobStore, record: JobRecord, reason: str) -> JobRecord:
    """Cancel a job in its scheduler and in the store; idempotent for cancelled jobs.

    A member of a packed allocation whose other members have not all ended is stopped alone:
    its cancel marker is written (the launcher stops its step, or never starts it), and the
    allocation runs on; cancelling the last live member cancels the allocation. A job array's
    member is its own task (`scancel <id>_<i>`); before the array's id is recorded, its marker
    keeps its task from running (and its submitter cancels the task once it records the array).

    A job with no recorded scheduler id (its submitter may be between `sbatch` and recording the
    answer, or dead there) is cancelled by name: under the name's lock the scheduler finds the
    job, which is cancelled, or fences the name so that no later submission runs it.

    Raises:
        JobAlreadyEnded: When the job completed or failed before the cancel.
    """
    if record.status.is_terminal:
        if record.status is JobStatus.CANCELLED:
            return record
        raise JobAlreadyEnded(
            f"job {record.id} already ended {record.status.value} at {record.completed_at or record.updated_at:%Y-%m-%d %H:%M:%S} UTC; nothing to cancel"
        )
    scheduler = scheduler_for(record.system)
    name = record_job_name(record)
    stopped_by_marker = record.packed or (record.array_member and record.scheduler_job_id is None)
    if stopped_by_marker and _other_members_live(store, record):  # stop its step (or its task), not the allocation
        scheduler.cancel_member(JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id).work_dir)
        return _record_cancelled(store, scheduler, record, reason)
    if record.scheduler_job_id is None:
        work_dir = JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id).work_dir
        found = scheduler.abandon(name, submission_dir(scheduler.scratch_root, record), record.created_at - NAME_LOOKUP_MARGIN)
        if found is not None:  # recorded as the record's first, so an end it already reached is kept, not overwritten
            for transition in adopt(store, record, found, work_dir, TrackingPolicy.from_settings(get_settings())):
                announce(store, scheduler, transition)
            return cancel_stored_job(store, store.get(record.id), reason)
    if record.scheduler_job_id:
        scheduler.cancel(record.scheduler_job_id, name)
    return _record_cancelled(store, scheduler, record, reason)


def _other_members_live(store: JobStore, record: JobRecord) -> bool:
    """Whether another member of the record's packed allocation has not ended (then the allocation runs on)."""
    assert record.allocation_name is not None
    return any(member.id != record.id and not member.status.is_terminal for member in store.allocation_members(record.allocation_name))


def _record_cancelled(store: JobStore, scheduler: Scheduler, record: JobRecord, reason: str) -> JobRecord:
    try:
        transition = store.transition(record.id, JobStatus.CANCELLED, JobUpdate(reason=reason, completed_at=utcnow()))
    except IllegalTransition:  # it ended on its own between the read and the cancel
        return cancel_stored_job(store, store.get(record.id), reason)
    return announce(store, scheduler, transition)


@cluster_task
def cancel_job_run(job_id: uuid.UUID, reason: str = "cancelled by user") -> JobRecord:
    """Cancel one job by its id.

    Example:
        ```python
        cancel_job_run(uuid.UUID("..."))
        ```
    """
    store = open_job_store()
    return cancel_stored_job(store, store.get(job_id), reason)


def cancel_scheduler_job(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """Flow hook (cancelled or crashed run): cancel the run's scheduler job, found in the job store."""
    store = open_job_store()
    record = store.find_by_flow_run(flow_run.id)
    if record is not None and not record.status.is_terminal:
        cancel_stored_job(store, record, f"flow run {flow_run.name} {state.name.lower()}")
        run_logger().info("Cancelled job %s (%s) with its flow run", record.id, record.scheduler_job_id)

