"""submit-batch: many jobs packed into few allocations, a parallel limit, TACC's per-user queue
limits, one poll per system."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from prefect import flow, get_run_logger, runtime
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture
from pydantic import BaseModel, Field

from blocks.clusters import packed_placement, poll_floor_seconds
from blocks.database import open_job_store
from tacc_jobs.models import JobRecord, JobRequest, Plan, Priority
from tacc_jobs.planning.charges import split_charge
from tacc_jobs.planning.packing import Allocation, Strategy
from tacc_jobs.schedulers.arrays import ARRAY_OPTION, parse_array_spec
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.store import DatasetStaging, JobStore
from tacc_jobs.store.slots import slot_wait_reason
from tasks.planning import plan_job_request, plan_request_batch
from tasks.staging import stage_dataset_to_scratch
from tasks.submission import (
    end_unsubmitted_job,
    record_new_job,
    submit_allocation,
    submit_to_scheduler,
)
from tasks.tracking import sweep_system


def batch_run_name() -> str:
    """`submit-batch/<n>-jobs`."""
    return f"submit-batch/{len(runtime.flow_run.parameters.get('requests', []))}-jobs"


class Submission(BaseModel):
    """One sbatch of the batch: a packed allocation or a job array of several records, or one record alone."""

    members: list[int] = Field(description="Indexes of its records in the batch")
    allocation_name: str | None = None
    sbatch_args: list[str] = Field(
        default_factory=list, description="A packed allocation's or an array's sbatch options"
    )
    slots: int = Field(
        default=1, description="Slurm jobs it may run at once, against the per-user cap: an array's throttle K"
    )


CHARGE_WAIT_SECONDS = 60.0
"""After its last record ended, a waiting batch sweeps this long (or 4 polls) for its allocations' charges."""


def awaiting_charge(records: list[JobRecord]) -> bool:
    """Whether a submitted packed member of the batch has no charge yet (its allocation's end is
    charged by the sweep that sees it).

    Example:
        ```python
        awaiting_charge(records)  # False once every allocation's SUs are split
        ```
    """
    return any(
        record.packed and record.scheduler_job_id is not None and record.charged_su is None for record in records
    )


def has_slot(store: JobStore, records: list[JobRecord], launching: list[tuple[JobRecord, int]], slots: int = 1) -> bool:
    """Whether each user of a submission may have `slots` more Slurm jobs in its queue
    (`slot_wait_reason`), counting the submissions being launched alongside.

    Args:
        launching: The first record and the slots of each submission being launched now.

    Example:
        ```python
        has_slot(store, [records[0]], launching=[])  # True
        ```
    """
    for record in records:
        same = sum(
            count
            for other, count in launching
            if (other.user_id, other.system, other.queue) == (record.user_id, record.system, record.queue)
        )
        if slot_wait_reason(store, record, same, slots):
            return False
    return True


def one_per_request_reason(allocation: Allocation) -> str | None:
    """Why a planned allocation of several requests is submitted one job per request; None when it is not.

    Example:
        ```python
        one_per_request_reason(plan.allocations[0])  # "ls6 goes through Tapis, ...: job arrays need Slurm"
        ```
    """
    if allocation.strategy is Strategy.SINGLE or packed_placement(allocation.system) is not None:
        return None
    what = "packed allocations" if allocation.strategy is Strategy.PACKED else "job arrays"
    return f"{allocation.system} goes through Tapis, which runs one app per job: {what} need Slurm"


def batch_submissions(
    store: JobStore, records: list[JobRecord], requests: list[JobRequest], allocations: list[Allocation]
) -> list[Submission]:
    """The batch's Slurm jobs, high priority first: each packed allocation with its members
    recorded as such (its name shared, each estimated at its share of the allocation's SUs, by
    the GPU-seconds it asks for), each job array with its members recorded as its tasks (its
    name shared, task i the array's i-th request, each estimated at one task's SUs), every other
    request alone.

    Example:
        ```python
        batch_submissions(store, records, requests, plan_request_batch(requests).allocations)[0].allocation_name  # "tacc-5f0e..."
        ```
    """
    logger = get_run_logger()
    submissions = []
    for number, allocation in enumerate(allocations, start=1):
        reason = one_per_request_reason(allocation)
        if allocation.strategy is Strategy.PACKED and reason is None:
            name = scheduler_job_name(uuid.uuid4())
            gpu_seconds = [
                requests[index].gpu_count * requests[index].max_runtime.total_seconds() for index in allocation.requests
            ]
            shares = split_charge(allocation.su, gpu_seconds)
            store.assign_allocation(
                {records[index].id: share for index, share in zip(allocation.requests, shares)}, name, allocation.nodes
            )
            submissions.append(
                Submission(members=allocation.requests, allocation_name=name, sbatch_args=allocation.sbatch_args)
            )
            logger.info(
                "Allocation %d: %s packs %d requests onto %d node(s) of %s",
                number,
                name,
                len(allocation.requests),
                allocation.nodes,
                allocation.queue,
            )
            continue
        if allocation.strategy is Strategy.ARRAY and reason is None:
            name = scheduler_job_name(uuid.uuid4())
            store.assign_allocation(
                {records[index].id: su for index, su in zip(allocation.requests, allocation.request_su)},
                name,
                allocation.nodes,
                array=True,
            )
            throttle = parse_array_spec(allocation.sbatch_args[allocation.sbatch_args.index(ARRAY_OPTION) + 1])[1]
            submissions.append(
                Submission(
                    members=allocation.requests,
                    allocation_name=name,
                    sbatch_args=allocation.sbatch_args,
                    slots=min(throttle or len(allocation.requests), len(allocation.requests)),
                )
            )
            logger.info(
                "Allocation %d: %s is a job array of %d requests of %d node(s) each on %s: %s",
                number,
                name,
                len(allocation.requests),
                allocation.nodes,
                allocation.queue,
                allocation.reason,
            )
            continue
        if reason is not None:
            logger.info(
                "Allocation %d (%s, %d requests) goes one job per request: %s",
                number,
                allocation.strategy.value,
                len(allocation.requests),
                reason,
            )
        submissions += [Submission(members=[index]) for index in allocation.requests]
    return sorted(submissions, key=lambda submission: min(submission.members))


@flow(name="submit-batch", flow_run_name=batch_run_name)
def submit_batch(
    requests: list[JobRequest], parallel_limit: Annotated[int, Field(ge=1, le=64)] = 2, wait: bool = True
) -> list[JobRecord]:
    """Submit many jobs: all planned first (a refusal stops the batch before anything is written),
    recorded QUEUED, packed as the batch planner packs them (requests of one system, queue,
    agent and account share whole nodes in one allocation, each on its own GPUs, each keeping
    its record), then staged and submitted `parallel_limit` Slurm jobs at a time, high priority
    first; requests that fill whole nodes go as one job array, a record per task. A user never
    has more Slurm jobs in a queue than TACC allows (an allocation counts once, an array as its
    throttle K): the excess waits in QUEUED. The batch is polled together: one scheduler call per
    system and cycle. A waiting batch returns once every record has ended and its allocations'
    charges are split (or `CHARGE_WAIT_SECONDS` later, for an allocation the scheduler lost).

    Example:
        ```python
        from flows.batch import submit_batch
        records = submit_batch([request_a, request_b, request_c], parallel_limit=2)
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    ordered = sorted(requests, key=lambda request: request.priority is not Priority.HIGH)
    batch_plan = plan_request_batch(ordered)  # budgets checked on each user's share of the packed plan
    plans: list[Plan] = [plan_job_request(request, check_budget=False) for request in ordered]
    record_each = record_new_job.with_options(cache_policy=NO_CACHE)  # two equal requests are two jobs
    records = [record_each(request, plan, one_per_flow_run=False) for request, plan in zip(ordered, plans)]
    pending = batch_submissions(store, records, ordered, batch_plan.allocations)
    records = [store.get(record.id) for record in records]  # with their allocation names
    systems = sorted({record.system for record in records})
    interval = max(poll_floor_seconds(system) for system in systems)
    settle_by: float | None = None
    while True:
        for system in systems:
            sweep_system(system, return_state=True)  # a failed sweep is retried next cycle; it fails nothing
        launching: list[tuple[Submission, list[PrefectFuture[DatasetStaging]], PrefectFuture[object]]] = []
        for submission in list(pending):
            if len(launching) == parallel_limit:
                break
            members = [records[index] for index in submission.members]
            if not has_slot(
                store, members, [(records[item[0].members[0]], item[0].slots) for item in launching], submission.slots
            ):
                continue
            staged = [
                stage_dataset_to_scratch.submit(dataset_id, members[0].system, members[0].priority)
                for dataset_id in sorted({record.dataset_id for record in members})
            ]
            if submission.allocation_name is None:
                index = submission.members[0]
                future = submit_to_scheduler.submit(records[index], ordered[index], plans[index], wait_for=staged)
            else:
                future = submit_allocation.submit(
                    submission.allocation_name,
                    members,
                    [ordered[i] for i in submission.members],
                    submission.sbatch_args,
                    wait_for=staged,
                )
            launching.append((submission, staged, future))
            pending.remove(submission)
        for submission, staged, future in launching:
            try:
                future.result()
            except Exception as error:  # one submission's failure does not stop the batch
                for index in submission.members:
                    end_unsubmitted_job(
                        records[index], error, sbatch_attempted=all(stage.state.is_completed() for stage in staged)
                    )
                logger.warning(
                    "%s of the batch was not submitted: %s",
                    submission.allocation_name or f"Job {records[submission.members[0]].id}",
                    error,
                )
        current = [store.get(record.id) for record in records]
        if not pending and (not wait or all(record.status.is_terminal for record in current)):
            settle_by = settle_by or time.monotonic() + max(CHARGE_WAIT_SECONDS, 4 * interval)
            if not wait or not awaiting_charge(current) or time.monotonic() >= settle_by:
                return current
        if pending and not launching:
            logger.info("%d Slurm job(s) wait in QUEUED for a free per-user slot", len(pending))
        time.sleep(interval)
