"""Following jobs: observe many in one scheduler call, record what changed, pace the polling."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from tacc_jobs.exceptions import IllegalTransition
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.schedulers import Scheduler, SchedulerJobState
from tacc_jobs.schedulers.job_script import JobPaths
from tacc_jobs.schedulers.states import map_scheduler_state
from tacc_jobs.store import JobStore, JobUpdate, Transition


class TrackedJob(BaseModel):
    """One submitted job as the tracker follows it."""

    scheduler_job_id: str
    progress_path: str
    stdout_path: str | None = None
    stdout_offset: int = 0

    @classmethod
    def from_record(cls, record: JobRecord) -> TrackedJob:
        """Follow a stored job (its progress only; no log tail)."""
        if record.scheduler_job_id is None or record.work_dir is None:
            raise ValueError(f"job {record.id} has not been submitted")
        return cls(scheduler_job_id=record.scheduler_job_id, progress_path=JobPaths.for_work_dir(record.work_dir).progress)


class JobObservation(BaseModel):
    """What one poll saw of one job."""

    scheduler_job_id: str
    state: SchedulerJobState | None = None
    status: JobStatus | None = None
    reason: str | None = None
    progress: float | None = None
    log: str = ""
    next_stdout_offset: int = 0

    @property
    def ended(self) -> bool:
        """Whether the scheduler reports the job finished."""
        return self.status is not None and self.status.is_terminal


def _parse_progress(text: str) -> float | None:
    try:
        return min(1.0, max(0.0, float(text.strip().splitlines()[-1])))
    except (ValueError, IndexError):
        return None


def observe(scheduler: Scheduler, jobs: Sequence[TrackedJob]) -> list[JobObservation]:
    """Observe every job with one `states` call and one `read_files` call, whatever their number.

    Jobs the scheduler no longer knows come back with `state=None`: their status is left as is.
    """
    if not jobs:
        return []
    states = scheduler.states([job.scheduler_job_id for job in jobs])
    offsets = {job.progress_path: 0 for job in jobs}
    offsets.update({job.stdout_path: job.stdout_offset for job in jobs if job.stdout_path})
    files = scheduler.read_files(offsets)
    observations = []
    for job in jobs:
        state = states.get(job.scheduler_job_id)
        observation = JobObservation(scheduler_job_id=job.scheduler_job_id, state=state)
        if state is not None:
            observation.status, observation.reason = map_scheduler_state(state)
        observation.progress = _parse_progress(files[job.progress_path].data)
        if job.stdout_path:
            observation.log = files[job.stdout_path].data
            observation.next_stdout_offset = files[job.stdout_path].next_offset
        observations.append(observation)
    return observations


def charged_su(record: JobRecord, start: datetime | None, end: datetime | None) -> float | None:
    """TACC's charge for a finished job: whole nodes x max(hours used, 0.25) x queue rate."""
    spec = find_queue(record.system, record.queue)
    if spec is None or start is None or end is None:
        return None
    return charge_su(spec, record.nodes, end - start)


def record_observation(store: JobStore, record: JobRecord, observation: JobObservation) -> Transition | None:
    """Apply one observation to the store; None when the scheduler did not report the job."""
    state = observation.state
    if state is None or observation.status is None:
        return None
    status = observation.status
    progress = 1.0 if status is JobStatus.COMPLETED else observation.progress
    update = JobUpdate(reason=observation.reason, progress=progress, started_at=state.start)
    if status.is_terminal:
        update.completed_at = state.end
        update.charged_su = charged_su(record, state.start, state.end)
    try:
        return store.transition(record.id, status, update)
    except IllegalTransition:
        current = store.get(record.id)
        if current.status.is_terminal:  # ended in the store first (a cancel): a late RUNNING/COMPLETING changes nothing
            return Transition(record=current, previous=current.status)
        raise


def read_result(scheduler: Scheduler, result_path: str) -> dict[str, object] | None:
    """The agent's result JSON, or None when it wrote none (or nothing valid)."""
    text = scheduler.read_files({result_path: 0})[result_path].data
    try:
        result = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return result if isinstance(result, dict) else None


def next_poll_interval(
    current: float, changed: bool, status: JobStatus | None, seconds_left: float | None, minimum: float, maximum: float
) -> float:
    """Adaptive polling: short after a change and near the end, growing while a job waits.

    Example:
        >>> next_poll_interval(10, False, JobStatus.QUEUING, None, 5, 300)
        20
        >>> next_poll_interval(60, False, JobStatus.RUNNING, 30, 5, 300)
        7.5
    """
    if changed:
        return minimum
    grown = current * (2 if status is JobStatus.QUEUING else 1.5)
    if status is JobStatus.RUNNING and seconds_left is not None:
        grown = min(grown, seconds_left / 4)
    return max(minimum, min(grown, maximum))


def job_event_payload(record: JobRecord) -> dict[str, object]:
    """What a job state change or a webhook tells the outside world about a job."""
    return {
        "id": str(record.id),
        "status": record.status.value,
        "reason": record.reason,
        "progress": record.progress,
        "system": record.system,
        "queue": record.queue,
        "scheduler_job_id": record.scheduler_job_id,
        "metrics": record.result or {},
        "output_location": JobPaths.for_work_dir(record.work_dir).output_dir if record.work_dir else None,
        "charged_su": record.charged_su,
    }


def job_resource(job_id: uuid.UUID) -> str:
    """The Prefect event resource id of a job."""
    return f"tacc.job.{job_id}"
