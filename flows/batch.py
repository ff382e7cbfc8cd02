"""submit-batch: many jobs, a parallel limit, TACC's per-user queue limits, one poll per system."""

from __future__ import annotations

import time
from collections import Counter
from typing import Annotated

from prefect import flow, get_run_logger, runtime
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from pydantic import Field

from blocks.clusters import poll_floor_seconds
from blocks.database import open_job_store
from tacc_jobs.models import JobRecord, JobRequest, Plan, Priority
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.store import DatasetStaging, JobStore
from tasks.planning import plan_job_request
from tasks.staging import stage_dataset_to_scratch
from tasks.submission import end_unsubmitted_job, record_new_job, submit_to_scheduler
from tasks.tracking import sweep_system


def batch_run_name() -> str:
    """`submit-batch/<n>-jobs`."""
    return f"submit-batch/{len(runtime.flow_run.parameters.get('requests', []))}-jobs"


def has_slot(store: JobStore, record: JobRecord, launching: list[JobRecord]) -> bool:
    """Whether the user may have one more job in the record's queue (TACC's max jobs per user)."""
    spec = find_queue(record.system, record.queue)
    limit = spec.max_jobs_per_user if spec else 1
    same = sum(1 for other in launching if (other.user_id, other.system, other.queue) == (record.user_id, record.system, record.queue))
    return store.active_count(record.user_id, record.system, record.queue) + same < limit


@flow(name="submit-batch", flow_run_name=batch_run_name)
def submit_batch(requests: list[JobRequest], parallel_limit: Annotated[int, Field(ge=1, le=64)] = 2, wait: bool = True) -> list[JobRecord]:
    """Submit many jobs: all planned first (a refusal stops the batch before anything is written),
    recorded QUEUED, then staged and submitted `parallel_limit` at a time, high priority first.
    A user never has more jobs in a queue than TACC allows: the excess waits in QUEUED. The
    batch is polled together: one scheduler call per system and cycle.

    Example:
        ```python
        from flows.batch import submit_batch
        records = submit_batch([request_a, request_b, request_c], parallel_limit=2)
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    ordered = sorted(requests, key=lambda request: request.priority is not Priority.HIGH)
    plans: list[Plan] = []
    planned_su: Counter[str] = Counter()  # a batch must not spend a budget twice
    for request in ordered:
        plans.append(plan_job_request(request, su_planned=planned_su[request.user_id]))
        planned_su[request.user_id] += plans[-1].estimated_su
    record_each = record_new_job.with_options(cache_policy=NO_CACHE)  # two equal requests are two jobs
    records = [record_each(request, plan) for request, plan in zip(ordered, plans)]
    pending = list(zip(records, ordered, plans))
    systems = sorted({record.system for record in records})
    interval = max(poll_floor_seconds(system) for system in systems)
    while True:
        for system in systems:
            sweep_system(system, return_state=True)  # a failed sweep is retried next cycle; it fails nothing
        launching: list[tuple[JobRecord, PrefectFuture[DatasetStaging], PrefectFuture[JobRecord]]] = []
        for record, request, plan in list(pending):
            if len(launching) == parallel_limit:
                break
            if has_slot(store, record, [item[0] for item in launching]):
                staged = stage_dataset_to_scratch.submit(record.dataset_id, record.system, record.priority)
                launching.append((record, staged, submit_to_scheduler.submit(record, request, plan, wait_for=[staged])))
                pending.remove((record, request, plan))
        for record, staged, future in launching:
            try:
                future.result()
            except Exception as error:  # one job's failure does not stop the batch
                end_unsubmitted_job(record, error, sbatch_attempted=staged.state.is_completed())
                logger.warning("Job %s of the batch was not submitted: %s", record.id, error)
        current = [store.get(record.id) for record in records]
        if not pending and (not wait or all(record.status.is_terminal for record in current)):
            return current
        if pending and not launching:
            logger.info("%d job(s) wait in QUEUED for a free per-user slot", len(pending))
        time.sleep(interval)
