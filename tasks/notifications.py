"""Telling the world a job changed: a Prefect event per status change, the result kept, the webhook called."""

from __future__ import annotations

from prefect.events import emit_event
from prefect.tasks import exponential_backoff

from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers import Scheduler
from tacc_jobs.settings import get_settings
from tacc_jobs.store import JobStore, JobUpdate, Transition
from tacc_jobs.tracking import job_event_payload, job_resource, read_job_result
from tacc_jobs.webhooks import post_webhook
from tasks.policies import cluster_task
from tasks.run_context import run_logger


def announce_login_node(system: str, reason: str | None) -> None:
    """Tell operators that a system's login node cannot be reached (`reason` says why and what
    to do), or, with None, that it can again: `tacc.login-node.unavailable`/`.available`, for an
    automation to notify someone who can log in."""
    emit_event(
        event=f"tacc.login-node.{'unavailable' if reason else 'available'}",
        resource={"prefect.resource.id": f"tacc.system.{system}", "prefect.resource.name": system},
        payload={"system": system, "reason": reason},
    )


def announce(store: JobStore, scheduler: Scheduler, transition: Transition) -> JobRecord:
    """After a status change: emit a Prefect event; when it ended the job, keep its result (read
    now, unless the poll that saw the end brought it) and call its webhook. Only the caller whose
    transition moved the job does this."""
    record = transition.record
    if not transition.moved:
        return record
    if record.status is JobStatus.COMPLETED and record.work_dir and record.result is None:  # a sweep's poll brings it
        result = read_job_result(scheduler, record)
        if result is not None:
            record = store.transition(record.id, record.status, JobUpdate(result=result)).record
    emit_event(
        event=f"tacc.job.{record.status.value.lower()}",
        resource={
            "prefect.resource.id": job_resource(record.id),
            "prefect.resource.name": f"{record.agent}/{record.dataset_id}",
        },
        payload={**job_event_payload(record), "previous_status": transition.previous.value},
    )
    if record.status.is_terminal and record.webhook_url:
        state = send_job_webhook(record, return_state=True)
        if state.is_failed():
            run_logger().warning("Webhook for job %s failed after retries: %s", record.id, state.message)
    return record


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
    return post_webhook(record.webhook_url, job_event_payload(record), get_settings().allow_private_webhooks)
