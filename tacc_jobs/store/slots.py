"""TACC's per-user cap on jobs in a queue, as the job store counts them."""

from __future__ import annotations

from tacc_jobs.models import JobRecord
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.store.jobs import JobStore


def slot_wait_reason(store: JobStore, record: JobRecord, launching: int = 0, slots: int = 1) -> str | None:
    """Why the job's user may not add `slots` more Slurm jobs to its queue now (None: they may).

    A packed allocation counts once however many records it runs; a job array counts as its
    throttle K (`slots`) until it is submitted, then as its live tasks.

    Args:
        store: The job store, which counts the user's jobs in the queue.
        record: The job (the first member of a packed allocation or array).
        launching: Slots of the same user and queue being submitted alongside, not yet counted.
        slots: Slots this submission takes.

    Example:
        >>> from tacc_jobs.models import JobRequest, parse_request
        >>> from tacc_jobs.planning.planner import PlanningContext, plan_request
        >>> from tacc_jobs.store import migrate
        >>> from tacc_jobs.store.engine import sqlite_engine
        >>> store = JobStore(sqlite_engine("sqlite://"))
        >>> migrate(store.engine)
        >>> request = parse_request({"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4,
        ...                          "max_runtime": "1h", "user_id": "jdoe", "system": "local", "queue": "local-gpu-dev"})
        >>> record = store.create(request, plan_request(request, PlanningContext()))
        >>> slot_wait_reason(store, record) is None
        True
        >>> slot_wait_reason(store, record, launching=1)
        'waiting for a slot on local-gpu-dev: jdoe has 1 of its 1 job(s) per user there'
    """
    spec = find_queue(record.system, record.queue)
    limit = spec.max_jobs_per_user if spec else 1
    taken = store.active_submissions(record.user_id, record.system, record.queue) + launching
    if taken + slots <= limit:
        return None
    return f"waiting for a slot on {record.queue}: {record.user_id} has {taken} of its {limit} job(s) per user there"
