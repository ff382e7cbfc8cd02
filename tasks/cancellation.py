"""Cancelling jobs: in their scheduler and in the store, from a flow, a hook or a sweep."""

from __future__ import annotations

import time
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
from tacc_jobs.store.locks import database_lock
from tacc_jobs.tracking import NAME_LOOKUP_MARGIN, TrackedJob, TrackingPolicy, adopt, observe, record_observation
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
    if stopped_by_marker:
        # one member's cancel at a time (one lock for all: no lock file per allocation beside a
        # SQLite database): two cancels of an allocation's last two members each read the other
        # live and stopped only their own step, leaving the allocation to run on
        with database_lock(store.engine, "cancel-member", wait=True):
            if _other_members_live(store, record):  # stop its step (or its task), not the allocation
                scheduler.cancel_member(JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id).work_dir)
                return _record_cancelled(store, scheduler, record, reason)
    if record.scheduler_job_id is None:
        work_dir = JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id).work_dir
        found = scheduler.abandon(
            name, submission_dir(scheduler.scratch_root, record), record.created_at - NAME_LOOKUP_MARGIN
        )
        if found is not None:  # recorded as the record's first, so an end it already reached is kept, not overwritten
            for transition in adopt(store, record, found, work_dir, TrackingPolicy.from_settings(get_settings())):
                announce(store, scheduler, transition)
            return cancel_stored_job(store, store.get(record.id), reason)
    if record.scheduler_job_id:
        return _cancel_and_record_its_end(store, scheduler, record, reason)
    return _record_cancelled(store, scheduler, record, reason)


CANCEL_SETTLE_SECONDS = 30.0
"""How long a cancel waits for the scheduler to report the job's end before leaving it to watch-jobs."""
CANCEL_POLL_SECONDS = 0.5


def _cancel_and_record_its_end(store: JobStore, scheduler: Scheduler, record: JobRecord, reason: str) -> JobRecord:
    """`scancel` the job, then record the end its scheduler reports, through the one tracking
    path: CANCELLED with what the scheduler charged (its elapsed time), or, when the job ended on
    its own before the cancel reached it, that end with its result and charge (and the caller is
    told, `JobAlreadyEnded`). Never CANCELLED on the orchestrator's word alone: a job that the
    scheduler has not ended within `CANCEL_SETTLE_SECONDS` stays active, its reason saying the
    cancel was sent, and the sweeps record its end."""
    scheduler.cancel(record.scheduler_job_id, record_job_name(record))  # type: ignore[arg-type]
    deadline = time.monotonic() + CANCEL_SETTLE_SECONDS
    while True:
        [observation] = observe(scheduler, [TrackedJob.from_record(record)])
        if observation.status is not None and observation.status.is_terminal:
            break
        if time.monotonic() > deadline:
            pending = f"{reason}: cancel sent at {utcnow():%Y-%m-%d %H:%M:%S} UTC; watch-jobs records the end the scheduler reports"
            noted = store.transition(record.id, record.status, JobUpdate(reason=pending), current=record).record
            if noted.status is not record.status:  # a sweep recorded a move (its end) meanwhile
                return cancel_stored_job(store, noted, reason)
            return noted
        time.sleep(CANCEL_POLL_SECONDS)
    if observation.status is JobStatus.CANCELLED:
        observation.reason = reason
    transition = record_observation(store, record, observation, TrackingPolicy.from_settings(get_settings()))
    assert transition is not None
    ended = announce(store, scheduler, transition)
    if ended.status is not JobStatus.CANCELLED:
        raise JobAlreadyEnded(
            f"job {record.id} ended {ended.status.value} before the cancel reached it; its end and charge are kept"
        )
    return ended


def _other_members_live(store: JobStore, record: JobRecord) -> bool:
    """Whether another member of the record's packed allocation has not ended (then the allocation runs on)."""
    assert record.allocation_name is not None
    return any(
        member.id != record.id and not member.status.is_terminal
        for member in store.allocation_members(record.allocation_name)
    )


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
    """Flow hook of a cancelled run: cancel the run's scheduler job, found in the job store.

    Not a crash hook: a run that crashes (SIGTERM, a stopped worker) leaves its job running, and
    watch-jobs follows it to its end (`finish_crashed_runs_of_ended_jobs`)."""
    store = open_job_store()
    record = store.find_by_flow_run(flow_run.id)
    if record is not None and not record.status.is_terminal:
        try:
            cancel_stored_job(store, record, f"flow run {flow_run.name} {state.name.lower()}")
        except JobAlreadyEnded as ended:
            run_logger().info("%s", ended)
            return
        run_logger().info("Cancelled job %s (%s) with its flow run", record.id, record.scheduler_job_id)
