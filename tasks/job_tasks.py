"""The job lifecycle as Prefect tasks: plan, record, stage, submit, wait, announce, cancel."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timezone

import httpx
from prefect import get_run_logger, runtime, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger
from prefect.tasks import exponential_backoff

from blocks.slurm_job import SlurmJob
from tasks.agents import AGENTS_DIR
from tasks.clusters import (
    agent_runtime,
    allocation_for,
    poll_floor_seconds,
    scheduler_for,
    transfer_for,
    transfer_host,
)
from tasks.job_script import JobPaths, render_job_script, scheduler_job_name
from tasks.models import JobRecord, JobRequest, JobStatus, Plan
from tasks.planner import PlanningContext, PlanRefused, plan_request
from tasks.retries import ONCE_PER_FLOW_RUN, cluster_task
from tasks.scheduler import JobSubmission, Scheduler
from tasks.settings import get_settings
from tasks.staging import StagingError, layout_advice, survey_dataset
from tasks.store import (
    JobStore,
    JobUpdate,
    Transition,
    open_job_store,
    open_staging_store,
)
from tasks.tracking import (
    JobObservation,
    job_event_payload,
    job_resource,
    read_result,
    record_observation,
)
from tasks.webhooks import private_webhook_reason

LOG_LINES_PER_POLL = 50


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow or task run; the module logger in hooks, which run outside."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger(__name__)


def request_run_name(flow_name: str) -> Callable[[], str]:
    """A flow-run namer `<flow>/<agent>/<dataset>` that reads the run's `request` parameter,
    whether it arrived as a model (Python call) or as a dict (deployment run)."""

    def name() -> str:
        request = runtime.flow_run.parameters.get("request", {})
        fields = request if isinstance(request, dict) else request.model_dump()
        return f"{flow_name}/{fields.get('agent', '?')}/{fields.get('dataset_id', '?')}"

    return name


class JobAlreadyEnded(ValueError):
    """The job has already ended, so there is nothing to cancel."""


def announce(store: JobStore, scheduler: Scheduler, transition: Transition) -> JobRecord:
    """After a status change: emit a Prefect event; when it ended the job, keep its result and
    call its webhook. Only the caller whose transition moved the job does this."""
    record = transition.record
    if not transition.moved:
        return record
    if record.status is JobStatus.COMPLETED and record.work_dir:
        result = read_result(scheduler, JobPaths.for_work_dir(record.work_dir).result)
        if result is not None:
            record = store.transition(record.id, record.status, JobUpdate(result=result)).record
    emit_event(
        event=f"tacc.job.{record.status.value.lower()}",
        resource={"prefect.resource.id": job_resource(record.id), "prefect.resource.name": f"{record.agent}/{record.dataset_id}"},
        payload={**job_event_payload(record), "previous_status": transition.previous.value},
    )
    if record.status.is_terminal and record.webhook_url:
        state = send_job_webhook(record, return_state=True)
        if state.is_failed():
            run_logger().warning("Webhook for job %s failed after retries: %s", record.id, state.message)
    return record


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def plan_job_request(request: JobRequest, su_planned: float = 0.0) -> Plan:
    """Plan a request with this user's history and budget from the job store.

    Args:
        request: The job to plan.
        su_planned: SUs of the user's jobs planned alongside (a batch), not recorded yet: they
            count against the budget as recorded ones do.

    Example:
        ```python
        plan = plan_job_request(JobRequest(agent="AlphaCal", dataset_id="VLASS2.1.eb123456",
                                           gpu_count=4, max_runtime="2h", user_id="jdoe", system="ls6"))
        ```
    """
    settings = get_settings()
    store = open_job_store()
    if request.webhook_url and not settings.allow_private_webhooks:
        if reason := private_webhook_reason(str(request.webhook_url)):
            raise PlanRefused("webhook_url", reason.removeprefix("webhook_url: "))
    try:
        dataset = survey_dataset(settings.dataset_root, request.dataset_id)
    except StagingError as error:
        raise PlanRefused("dataset_id", str(error)) from None
    measured = open_staging_store().bandwidth(transfer_host(request.system.value))
    context = PlanningContext(
        usd_per_gpu_hour=settings.usd_per_gpu_hour,
        usd_per_gpu_hour_by_type=settings.usd_per_gpu_hour_by_type,
        cost_warning_usd=settings.cost_warning_usd,
        su_budget=settings.su_budgets.get(request.user_id),
        su_committed=store.su_committed(request.user_id) + su_planned,
        past_runtimes_minutes=store.past_runtimes_minutes(request.user_id, request.agent),
        account=allocation_for(request.system.value),
        dataset_bytes=dataset.bytes,
        bandwidth_bytes_per_second=measured or settings.default_bandwidth_mb_per_s * 1e6,
        bandwidth_measured=measured is not None,
        layout_advice=layout_advice(dataset),
    )
    return plan_request(request, context)


@task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def record_new_job(request: JobRequest, plan: Plan) -> JobRecord:
    """Record the job QUEUED, tied to the current flow run (so its hooks can find it).

    Cached per flow run: a resumed run gets the same record back, not a second job.

    Example:
        ```python
        record = record_new_job(request, plan)
        ```
    """
    flow_run_id = runtime.flow_run.id
    return open_job_store().create(request, plan, flow_run_id=uuid.UUID(flow_run_id) if flow_run_id else None)


def slurm_job_for(record: JobRecord, request: JobRequest | None = None, plan: Plan | None = None) -> SlurmJob:
    """The `SlurmJob` block of a stored job; with its request and plan, the script is rendered too."""
    settings = get_settings()
    scheduler = scheduler_for(record.system)
    paths = JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id)
    script = render_job_script(record.id, request, plan, paths, agent_runtime(record.system)) if request and plan else ""
    return SlurmJob(
        system=record.system,
        submission=JobSubmission(
            name=scheduler_job_name(record.id),
            script=script,
            work_dir=paths.work_dir,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            sbatch_args=plan.sbatch_args if plan else [],
        ),
        progress_path=paths.progress,
        result_path=paths.result,
        time_limit_seconds=plan.wall_time.total_seconds() if plan else None,
        poll_min_seconds=poll_floor_seconds(record.system),
        poll_max_seconds=settings.poll_max_seconds,
    )


@cluster_task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def submit_to_scheduler(record: JobRecord, request: JobRequest, plan: Plan) -> JobRecord:
    """Render the job script, submit it (`SlurmJob.trigger()`), record the job QUEUING.

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
    job = slurm_job_for(record, request, plan)
    if record.system != "local":
        transfer_for(record.system).push(AGENTS_DIR, agent_runtime(record.system).agent_home)
    run = job.trigger()
    store = open_job_store()
    try:
        return store.transition(
            record.id, JobStatus.QUEUING,
            JobUpdate(scheduler_job_id=run.scheduler_job_id, work_dir=job.submission.work_dir),
        ).record
    except Exception:  # cancelled meanwhile, or not recorded: an untracked job must not run and cost SUs
        run.scheduler.cancel(run.scheduler_job_id)
        raise


@cluster_task
def wait_for_job(record: JobRecord, pending_timeout: float | None = None) -> JobRecord:
    """Follow a submitted job to its end: store, progress artifact, log tail, events.

    Args:
        record: The submitted job (read again from the store: a sweep may have moved it).
        pending_timeout: Return early, still QUEUING, when the job waits in the queue this long.

    Example:
        ```python
        final = wait_for_job(record)
        final.status  # JobStatus.COMPLETED
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    record = store.get(record.id)
    run = slurm_job_for(record).attach(record.scheduler_job_id or "")
    artifact_id = create_progress_artifact(
        progress=record.progress * 100,
        key=f"job-{record.id}",
        description=f"{record.agent} on {record.dataset_id}: {record.system}/{record.queue} job {record.scheduler_job_id}",
    )

    def on_poll(observation: JobObservation) -> None:
        nonlocal record
        for line in observation.log.splitlines()[-LOG_LINES_PER_POLL:]:
            logger.info("[%s %s] %s", record.system, record.scheduler_job_id, line)
        transition = record_observation(store, record, observation)
        if transition is None:
            return
        if transition.moved or transition.record.reason != record.reason:
            reason = f" ({transition.record.reason})" if transition.record.reason else ""
            logger.info("Job %s: %s -> %s%s", record.scheduler_job_id, transition.previous.value, transition.record.status.value, reason)
        if transition.record.progress != record.progress:
            update_progress_artifact(artifact_id, progress=transition.record.progress * 100)
        record = announce(store, run.scheduler, transition)

    run.wait_for_completion(on_poll=on_poll, pending_timeout=pending_timeout)
    return store.get(record.id)


@cluster_task(retry_delay_seconds=exponential_backoff(backoff_factor=1))
def send_job_webhook(record: JobRecord) -> int:
    """POST the job's outcome (id, status, progress, metrics, output location) to its webhook.

    Example:
        ```python
        send_job_webhook(record)  # 200
        ```
    """
    if not record.webhook_url:
        raise ValueError(f"job {record.id} has no webhook_url")
    if not get_settings().allow_private_webhooks and (reason := private_webhook_reason(record.webhook_url)):
        raise ValueError(reason)
    response = httpx.post(record.webhook_url, json=job_event_payload(record), timeout=10.0)
    response.raise_for_status()
    return response.status_code


def cancel_stored_job(store: JobStore, record: JobRecord, reason: str) -> JobRecord:
    """Cancel a job in its scheduler (when submitted) and in the store; idempotent for cancelled jobs.

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
    if record.scheduler_job_id:
        scheduler.cancel(record.scheduler_job_id)
    transition = store.transition(
        record.id, JobStatus.CANCELLED, JobUpdate(reason=reason, completed_at=datetime.now(timezone.utc))
    )
    return announce(store, scheduler, transition)


def fail_unsubmitted_job(record: JobRecord, reason: str) -> JobRecord:
    """Record a job that never reached the scheduler (staging or submission failed) as FAILED."""
    store = open_job_store()
    if store.get(record.id).status.is_terminal:  # cancelled meanwhile: keep that
        return store.get(record.id)
    transition = store.transition(record.id, JobStatus.FAILED, JobUpdate(reason=reason, completed_at=datetime.now(timezone.utc)))
    return announce(store, scheduler_for(record.system), transition)


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
