"""Tracking jobs as Prefect tasks: follow one job to its end, or sweep every active job of a system."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from pydantic import BaseModel

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from tacc_jobs.exceptions import LoginNodeUnreachable, SchedulerError
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.settings import get_settings
from tacc_jobs.tracking import (
    LOGIN_NODE_REASON,
    NEVER_SUBMITTED_REASON,
    JobObservation,
    TrackedJob,
    TrackingPolicy,
    charge_ended_allocations,
    login_node_reason,
    observe,
    reconcile_unsubmitted,
    record_observation,
)
from tacc_jobs.walltime import utcnow
from tasks.flow_run_sync import ended_flow_runs
from tasks.notifications import announce, announce_login_node
from tasks.policies import cluster_task
from tasks.submission import batch_job_for

LOG_LINES_PER_POLL = 50


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
    job = batch_job_for(record)
    run = job.attach(record.scheduler_job_id or "")
    artifact_id = create_progress_artifact(
        progress=record.progress * 100,
        key=f"job-{record.id}",
        description=f"{record.agent} on {record.dataset_id}: {record.system}/{record.queue} job {record.scheduler_job_id}",
    )

    def on_poll(observation: JobObservation) -> None:
        nonlocal record
        for line in observation.log.splitlines()[-LOG_LINES_PER_POLL:]:
            logger.info("[%s %s] %s", record.system, record.scheduler_job_id, line)
        transition = record_observation(store, record, observation, job.tracking)
        if transition is None:
            if observation.unseen:  # it noted since when: the next seen poll must clear that
                record = store.get(record.id)
            return
        if transition.moved or transition.record.reason != record.reason:
            reason = f" ({transition.record.reason})" if transition.record.reason else ""
            logger.info(
                "Job %s: %s -> %s%s",
                record.scheduler_job_id,
                transition.previous.value,
                transition.record.status.value,
                reason,
            )
        if transition.record.progress != record.progress:
            update_progress_artifact(artifact_id, progress=transition.record.progress * 100)
        record = announce(store, run.scheduler, transition)

    run.wait_for_completion(on_poll=on_poll, pending_timeout=pending_timeout)
    return store.get(record.id)


class SystemSweep(BaseModel):
    """What one sweep saw on one system."""

    system: str
    active: int
    changed: int
    statuses: dict[str, int]
    adopted: int = 0
    abandoned: int = 0
    unobserved: str | None = None


@cluster_task
def sweep_system(system: str) -> SystemSweep:
    """Observe all active jobs of `system` in one scheduler call and record what changed, as the
    tracking policy reads it (requeues, unseen jobs, states not understood).

    When the scheduler cannot be reached (the login node down, or asking for an interactive
    login), nothing fails: its active jobs get the reason "waiting for the login node: ..." and
    one `tacc.login-node.unavailable` event says what to do; the first sweep that reaches it
    again clears the reason and emits `tacc.login-node.available`.

    Before that, jobs recorded QUEUED with no scheduler id past a grace period (their submitter
    may have died between `sbatch` and recording its answer) are looked up by name: adopted
    when found, abandoned for certain when their flow run has ended or they are too old.

    Example:
        ```python
        sweep_system("local").statuses  # {'RUNNING': 2, 'COMPLETED': 1}
        ```
    """
    logger = get_run_logger()
    settings = get_settings()
    policy = TrackingPolicy.from_settings(settings)
    store = open_job_store()
    scheduler = scheduler_for(system)
    now = utcnow()
    unsubmitted = store.unsubmitted(system, created_before=now - timedelta(seconds=settings.unsubmitted_grace_seconds))
    try:  # reconciliation failing (a daemon down, the API unreachable) must not stop the sweep of active jobs
        ended_runs = (
            ended_flow_runs({record.flow_run_id for record in unsubmitted if record.flow_run_id})
            if unsubmitted
            else set()
        )
        settled = reconcile_unsubmitted(
            store,
            scheduler,
            unsubmitted,
            policy,
            lambda record: record.flow_run_id is None or record.flow_run_id in ended_runs,
            timedelta(seconds=settings.unsubmitted_timeout_seconds),
            now,
        )
    except Exception as error:
        logger.warning("%s: jobs recorded without a scheduler id not settled this sweep: %s", system, error)
        settled = []
    for transition in settled:
        logger.warning(
            "%s job %s: %s -> %s (%s)",
            system,
            transition.record.id,
            transition.previous.value,
            transition.record.status.value,
            transition.record.reason,
        )
        announce(store, scheduler, transition)
    records = store.active(system)
    try:
        observations = observe(scheduler, [TrackedJob.from_record(record) for record in records])
    except LoginNodeUnreachable as error:  # down, or asking for a person: wait, fail nothing (a controller down fails)
        reason = login_node_reason(system, error)
        logger.warning("%s: %d active job(s) not observed this sweep: %s", system, len(records), reason)
        if store.note_unobserved(system, LOGIN_NODE_REASON, reason):
            announce_login_node(system, reason)
        return SystemSweep(
            system=system,
            active=len(records),
            changed=0,
            statuses=dict(Counter(record.status.value for record in records)),
            unobserved=reason,
        )
    if any((record.reason or "").startswith(LOGIN_NODE_REASON) for record in records):
        store.note_unobserved(system, LOGIN_NODE_REASON, None)
        announce_login_node(system, None)
    changed, statuses = 0, Counter[str]()
    for record, observation in zip(records, observations):
        if observation.not_understood:
            logger.warning(
                "%s job %s (%s): %s; its status is kept", system, record.scheduler_job_id, record.id, observation.reason
            )
        transition = record_observation(store, record, observation, policy, now)
        current = transition.record if transition else record
        statuses[current.status.value] += 1
        if transition is not None and transition.moved:
            changed += 1
            logger.info(
                "%s job %s (%s): %s -> %s",
                system,
                current.scheduler_job_id,
                current.id,
                transition.previous.value,
                current.status.value,
            )
            announce(store, scheduler, transition)
    allocations = [observation.allocation for observation in observations if observation.allocation is not None]
    try:  # what is recorded stays recorded; the next sweep charges what this one could not
        charged = charge_ended_allocations(store, scheduler, system, allocations, now)
    except SchedulerError as error:
        logger.warning("%s: ended packed allocations not charged this sweep: %s", system, error)
        charged = {}
    for name, members in charged.items():
        logger.info(
            "%s allocation %s ended: %s SUs split among %d members by GPU-seconds",
            system,
            name,
            round(sum(member.charged_su or 0.0 for member in members), 4),
            len(members),
        )
    return SystemSweep(
        system=system,
        active=len(records),
        changed=changed,
        statuses=dict(statuses),
        adopted=sum(t.previous is JobStatus.QUEUED and t.record.scheduler_job_id is not None for t in settled),
        abandoned=sum(t.record.reason == NEVER_SUBMITTED_REASON for t in settled),
    )
