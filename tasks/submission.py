"""Submitting jobs: record the request, render and submit its script, record the scheduler's id."""

from __future__ import annotations

import time
import uuid

from prefect import runtime, task

from blocks.clusters import (
    agent_runtime,
    packed_placement,
    poll_floor_seconds,
    scheduler_for,
    transfer_for,
)
from blocks.database import open_job_store
from blocks.jobs import BatchJob
from tacc_jobs.agents import AGENTS_DIR
from tacc_jobs.exceptions import JobAlreadyEnded, JobCapReached, TaccOrchestratorError, TransientError
from tacc_jobs.models import JobRecord, JobRequest, JobStatus, Plan
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.schedulers import JobSubmission, Scheduler
from tacc_jobs.schedulers.arrays import array_task_id, render_array
from tacc_jobs.schedulers.job_script import (
    JobPaths,
    job_environment,
    record_job_name,
    render_job_script,
    submission_dir,
)
from tacc_jobs.schedulers.packed_script import PackedMember, render_allocation
from tacc_jobs.settings import get_settings
from tacc_jobs.store import JobStore, JobUpdate
from tacc_jobs.store.slots import slot_wait_reason
from tacc_jobs.tracking import NAME_LOOKUP_MARGIN, TrackingPolicy
from tacc_jobs.walltime import utcnow
from tasks.notifications import announce
from tasks.policies import ONCE_PER_FLOW_RUN, cluster_task
from tasks.run_context import run_logger


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def record_new_job(request: JobRequest, plan: Plan, one_per_flow_run: bool = True) -> JobRecord:
    """Record the job QUEUED, tied to the current flow run (so its hooks can find it).

    Once per flow run: a resumed or re-run run gets the same record back, not a second job, from
    its cache or, when its persisted results were lost, from the store (its flow run's job).

    Args:
        request: What to run.
        plan: Its plan.
        one_per_flow_run: Whether the flow run records one job (`submit-job`), so a job it
            already recorded is its; a `submit-batch` run records many.

    Example:
        ```python
        record = record_new_job(request, plan)
        ```
    """
    store = open_job_store()
    flow_run_id = uuid.UUID(runtime.flow_run.id) if runtime.flow_run.id else None
    existing = store.find_by_flow_run(flow_run_id) if flow_run_id and one_per_flow_run else None
    return existing or store.create(request, plan, flow_run_id=flow_run_id)


def batch_job_for(record: JobRecord, request: JobRequest | None = None, plan: Plan | None = None) -> BatchJob:
    """The `BatchJob` block of a stored job; with its request and plan, the script is rendered too."""
    settings = get_settings()
    scheduler = scheduler_for(record.system)
    paths = JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id)
    runtime = agent_runtime(record.system)
    script = render_job_script(record.id, request, plan, paths, runtime) if request and plan else ""
    return BatchJob(
        system=record.system,
        submission=JobSubmission(
            name=record_job_name(record),
            script=script,
            work_dir=paths.work_dir,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            sbatch_args=plan.sbatch_args if plan else [],
            not_before=record.created_at - NAME_LOOKUP_MARGIN,
            agent=record.agent,
            env=job_environment(record.id, request, paths, runtime) if request else {},
            webhook_url=record.webhook_url,
        ),
        progress_path=paths.progress,
        result_path=paths.result,
        time_limit_seconds=plan.wall_time.total_seconds() if plan else None,
        poll_min_seconds=poll_floor_seconds(record.system),
        poll_max_seconds=settings.poll_max_seconds,
        tracking=TrackingPolicy.from_settings(settings),
    )


def wait_for_job_slot(store: JobStore, record: JobRecord, refusal: JobCapReached | None = None) -> None:
    """Hold a QUEUED job while its user is at the queue's cap on jobs per user, as the store
    counts them (`slot_wait_reason`) or as sbatch's `refusal` said, with the reason "waiting for
    a slot on <queue>" on its record; return when a slot is free.

    Raises:
        JobAlreadyEnded: When the job was cancelled or abandoned: submit nothing.

    Example:
        ```python
        wait_for_job_slot(store, record)  # returns at once below the cap
        ```
    """
    interval = poll_floor_seconds(record.system)
    while True:
        current = store.get(record.id)
        if current.status is not JobStatus.QUEUED:
            raise JobAlreadyEnded(f"job {record.id} is {current.status.value} ({current.reason}); it is not submitted")
        reason = f"waiting for a slot on {current.queue}: {refusal}" if refusal else slot_wait_reason(store, current)
        if reason is None:
            return
        if current.reason != reason:
            store.transition(record.id, JobStatus.QUEUED, JobUpdate(reason=reason))
            run_logger().info("Job %s is %s", record.id, reason)
        refusal = None  # after a refusal, one interval, then sbatch again if the store sees a slot
        time.sleep(interval)


@cluster_task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def submit_to_scheduler(record: JobRecord, request: JobRequest, plan: Plan) -> JobRecord:
    """Render the job script, submit it (`BatchJob.trigger()`), record the job QUEUING.

    A user at the queue's cap on jobs per user waits, QUEUED, for a slot (`wait_for_job_slot`),
    also when sbatch refuses the job over a cap (QOSMax*/AssocMax*): the job is submitted when one
    of theirs ends, never FAILED for it.

    At TACC the agents' programs are synced to `<scratch>/agents` first (rsync: a no-op when unchanged).

    If the job cannot be recorded (it was cancelled meanwhile, or the database failed), the new
    scheduler job is cancelled: no job runs untracked. Cached per flow run, so a resumed run does
    not submit again (and Slurm adopts a job of the same name rather than submitting twice).

    Example:
        ```python
        record = submit_to_scheduler(record, request, plan)
        record.scheduler_job_id
        ```
    """
    store = open_job_store()
    current = store.get(record.id)
    if current.scheduler_job_id is not None:  # submitted by an earlier attempt of this run (its cached answer lost)
        return current
    job = batch_job_for(record, request, plan)
    if record.system != "local":
        transfer_for(record.system).push(AGENTS_DIR, agent_runtime(record.system).agent_home)
    refusal: JobCapReached | None = None
    while True:
        wait_for_job_slot(store, record, refusal)
        store.mark_submit_started(record.id, utcnow())
        try:
            run = job.trigger()
            break
        except JobCapReached as error:  # sbatch counts jobs the store does not (the user's own): wait, then again
            refusal = error
    try:
        return store.transition(
            record.id,
            JobStatus.QUEUING,
            JobUpdate(scheduler_job_id=run.scheduler_job_id, work_dir=job.submission.work_dir),
        ).record
    except Exception:
        current = store.get(record.id)
        if current.scheduler_job_id == run.scheduler_job_id:  # a watch-jobs sweep adopted it first
            return current
        if current.status.is_terminal:  # cancelled or abandoned meanwhile: its job must not run untracked
            run.scheduler.cancel(run.scheduler_job_id, job.submission.name)
        raise  # not recorded (the database failed): a retry, or watch-jobs, adopts the job by name


@cluster_task
def submit_allocation(
    name: str, records: list[JobRecord], requests: list[JobRequest], sbatch_args: list[str]
) -> list[JobRecord]:
    """Submit a packed allocation or a job array once: one batch script (the launcher on its
    manifest; or, for an array, task i dispatching to member i) and each member's `member.sh`,
    written on the cluster under the allocation name's lock before `sbatch`; then every member
    still QUEUED gets the allocation's id (an array member its task's, `<id>_<i>`) and moves to
    QUEUING in one transaction, each announced like a job of its own.

    The allocation's name is its idempotency key, as a job's is: a retry adopts the job it finds.
    Members cancelled before submission are left out of the manifest (of `--array`); a member
    cancelled while sbatch ran is stopped once the answer is recorded.

    Raises:
        JobAlreadyEnded: When every member was cancelled or ended meanwhile.

    Example:
        ```python
        members = submit_allocation("tacc-5f0e...", records, requests, allocation.sbatch_args)
        ```
    """
    store = open_job_store()
    members = [PackedMember(record=store.get(record.id), request=request) for record, request in zip(records, requests)]
    live = [member for member in members if member.record.status is JobStatus.QUEUED]
    if not live:
        raise JobAlreadyEnded(f"every member of allocation {name} has ended or was cancelled; it is not submitted")
    first = live[0].record
    placement, spec = packed_placement(first.system), find_queue(first.system, first.queue)
    if placement is None or spec is None:
        raise TaccOrchestratorError(
            f"{first.system}/{first.queue}: packed allocations and job arrays run on Slurm or the embedded cluster only"
        )
    store.mark_allocation_submit_started(name, utcnow())
    scheduler, runtime = scheduler_for(first.system), agent_runtime(first.system)
    if first.array_member:
        submission = render_array(name, live, sbatch_args, scheduler.scratch_root, runtime)
    else:
        submission = render_allocation(
            name, live, sbatch_args, spec.gpus_per_node, scheduler.scratch_root, runtime, placement
        )
    submission.not_before = min(member.record.created_at for member in live) - NAME_LOOKUP_MARGIN
    if first.system != "local":
        transfer_for(first.system).push(AGENTS_DIR, runtime.agent_home)
    job_id = scheduler.submit(submission)
    work_dirs = {
        member.record.id: JobPaths.for_job(scheduler.scratch_root, member.record.id, member.record.dataset_id).work_dir
        for member in live
    }
    transitions = store.record_allocation_submitted(name, job_id, work_dirs)
    if first.array_member:  # a task whose member was cancelled while sbatch ran must not run untracked
        for transition in transitions:
            if (
                transition.record.id in work_dirs
                and transition.record.status.is_terminal
                and transition.record.array_index is not None
            ):
                scheduler.cancel(array_task_id(job_id, transition.record.array_index), name)
    elif all(
        transition.record.status.is_terminal for transition in transitions
    ):  # all cancelled meanwhile: nothing may run
        scheduler.cancel(job_id, name)
    return [announce(store, scheduler, transition) for transition in transitions]


def end_unsubmitted_job(record: JobRecord, error: BaseException, sbatch_attempted: bool) -> JobRecord:
    """After staging or submission failed: FAILED when certainly nothing reached the scheduler
    (staging failed first; or sbatch refused the job and a look-up by name, under the name's
    lock, found none and fenced the name); otherwise (a lost answer, a time-out) the job stays
    QUEUED with the reason, for watch-jobs to adopt by name or to end for certain. It is never
    marked FAILED on a guess.

    Args:
        record: The job.
        error: What failed.
        sbatch_attempted: Whether submission was under way (else staging failed before it).

    Example:
        ```python
        end_unsubmitted_job(record, error, sbatch_attempted=True)
        ```
    """
    store = open_job_store()
    current = store.get(record.id)
    if current.status is not JobStatus.QUEUED:  # submitted after all, cancelled, or ended meanwhile: keep that
        return current
    scheduler = scheduler_for(record.system)
    if sbatch_attempted and not _certainly_not_submitted(scheduler, current, error):
        reason = f"submission unconfirmed ({error}); watch-jobs will find the job by name or end this record"
        return store.transition(record.id, JobStatus.QUEUED, JobUpdate(reason=reason)).record
    transition = store.transition(
        record.id, JobStatus.FAILED, JobUpdate(reason=f"not submitted: {error}", completed_at=utcnow())
    )
    return announce(store, scheduler, transition)


def _certainly_not_submitted(scheduler: Scheduler, record: JobRecord, error: BaseException) -> bool:
    """A permanent refusal, and no job of the name (which is now fenced): nothing can run."""
    if isinstance(error, TransientError) or not isinstance(error, TaccOrchestratorError):
        return False
    try:
        return (
            scheduler.abandon(
                record_job_name(record),
                submission_dir(scheduler.scratch_root, record),
                record.created_at - NAME_LOOKUP_MARGIN,
            )
            is None
        )
    except TaccOrchestratorError:  # the look-up failed too: leave it to watch-jobs
        return False
