"""submit-job: plan -> stage -> submit -> wait -> record -> notify, for one GPU job."""

from __future__ import annotations

import hashlib
from typing import Annotated

from prefect import flow, suspend_flow_run
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext
from prefect.states import Cancelled
from pydantic import Field

from blocks.database import open_job_store
from tacc_jobs.exceptions import JobFailed
from tacc_jobs.models import JobRecord, JobRequest, JobStatus, Plan
from tacc_jobs.schedulers.job_script import JobPaths
from tasks.cancellation import cancel_scheduler_job
from tasks.planning import plan_job_request
from tasks.run_context import request_run_name, run_logger
from tasks.staging import artifact_key, stage_dataset_to_scratch
from tasks.submission import end_unsubmitted_job, record_new_job, submit_to_scheduler
from tasks.tracking import wait_for_job


def is_top_level_deployment_run() -> bool:
    """Whether this flow run may suspend: Prefect suspends only a deployment's own runs, not
    subflows (nor runs started by `run_deployment` inside another flow)."""
    context = FlowRunContext.get()
    run = context.flow_run if context else None
    return run is not None and run.deployment_id is not None and run.parent_task_run_id is None


HISTORY_ROWS = 20


def history_table(user_id: str) -> list[dict[str, object]]:
    """The user's latest jobs as rows of a table artifact."""
    return [
        {
            "job": str(job.id),
            "agent": job.agent,
            "dataset": job.dataset_id,
            "where": f"{job.system}/{job.queue}",
            "status": job.status.value,
            "reason": job.reason or "",
            "progress": f"{job.progress:.0%}",
            "SUs": job.charged_su,
            "created (UTC)": f"{job.created_at:%Y-%m-%d %H:%M}",
        }
        for job in open_job_store().history(user_id, limit=HISTORY_ROWS).items
    ]


def summary_markdown(record: JobRecord, plan: Plan) -> str:
    """The job's outcome as a markdown table for the Prefect UI."""
    output = JobPaths.for_work_dir(record.work_dir).output_dir if record.work_dir else "-"
    metrics = "".join(f"| metric `{key}` | {value} |\n" for key, value in (record.result or {}).items())
    runtime_text = f"{record.runtime.total_seconds():.0f} s" if record.runtime else "-"
    return (
        f"## {record.agent} on {record.dataset_id}: {record.status.value}\n\n"
        "| | |\n|---|---|\n"
        f"| job id | `{record.id}` |\n| scheduler job | {record.system}/{record.queue} #{record.scheduler_job_id} |\n"
        f"| nodes x GPUs | {plan.nodes} x {plan.gpus_per_node} ({plan.gpu_model}) |\n"
        f"| reason | {record.reason or '-'} |\n| runtime | {runtime_text} |\n"
        f"| SUs charged (estimate) | {record.charged_su if record.charged_su is not None else '-'} ({plan.estimated_su}) |\n"
        f"| output | `{output}` |\n{metrics}"
    )


@flow(
    name="submit-job",
    flow_run_name=request_run_name("submit-job"),
    on_cancellation=[cancel_scheduler_job],  # a crash is not a cancel: the job runs on, watch-jobs follows it
    persist_result=True,
)
def submit_job(
    request: JobRequest, wait: bool = True, suspend_after_seconds: Annotated[float, Field(ge=0)] | None = 300
) -> JobRecord:
    """Run one GPU job: plan it, stage its dataset, submit it, follow it to the end, notify.

    A deployment run whose job still waits in the queue after `suspend_after_seconds` suspends
    itself (`suspend_flow_run`): the worker is free while the job waits, for days if need be.
    `watch-jobs` resumes it when the job starts or ends; the resumed run runs from the top,
    and plan, record, stage and submit come back from their cache (persisted results), so the
    job is submitted once.

    Args:
        request: What to run, where, for whom.
        wait: Follow the job to its end (default); False returns once it is submitted and
            leaves tracking to `watch_jobs`.
        suspend_after_seconds: How long a deployment run holds its worker for a queued job
            before it suspends; None never suspends. Python calls and subflows never suspend.

    Returns:
        The job record. A job that ends FAILED fails the flow run (`JobFailed`); a cancelled
        job ends it Cancelled (a Python call raises `CancelledRun`; the record is in the store).

    Example:
        ```python
        from flows.submit import submit_job
        record = submit_job({"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4,
                             "max_runtime": "00:10:00", "user_id": "jdoe", "system": "local"})
        ```
    """
    plan = plan_job_request(request)
    record = record_new_job(request, plan)
    try:
        stage_dataset_to_scratch(record.dataset_id, record.system, record.priority)
    except Exception as error:
        end_unsubmitted_job(record, error, sbatch_attempted=False)
        raise
    try:
        record = submit_to_scheduler(record, request, plan)
    except Exception as error:  # a lost answer leaves the job QUEUED for watch-jobs, never FAILED on a guess
        end_unsubmitted_job(record, error, sbatch_attempted=True)
        raise
    if not wait:
        return record
    if suspend_after_seconds is not None and is_top_level_deployment_run():
        record = wait_for_job(record, pending_timeout=suspend_after_seconds)
        if record.status is JobStatus.QUEUING:  # the key makes it once per job: a resumed run goes on waiting
            run_logger().info(
                "Job %s is still queued: suspending until watch-jobs sees it start", record.scheduler_job_id
            )
            suspend_flow_run(key=f"queued-{record.id}")
    if not record.status.is_terminal:
        record = wait_for_job(record)
    create_markdown_artifact(
        markdown=summary_markdown(record, plan),
        key=f"job-summary-{record.id}",
        description=f"{record.agent} on {record.dataset_id}",
    )
    create_table_artifact(
        table=history_table(record.user_id),
        key=artifact_key("job-history", record.user_id, hashlib.sha256(record.user_id.encode()).hexdigest()[:8]),
        description=f"The last {HISTORY_ROWS} jobs of {record.user_id}",
    )
    if record.status is JobStatus.FAILED:
        raise JobFailed(f"job {record.id} ({record.system} #{record.scheduler_job_id}) FAILED: {record.reason}")
    if record.status is JobStatus.CANCELLED:
        return Cancelled(message=f"job {record.id} was cancelled: {record.reason}")  # type: ignore[return-value]
    return record
