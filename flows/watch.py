"""watch-jobs: one sweep over every active job, one scheduler call per system."""

from __future__ import annotations

from collections import Counter

from prefect import flow, get_run_logger
from pydantic import BaseModel

from tasks.clusters import scheduler_for
from tasks.flow_run_sync import (
    cancel_jobs_of_cancelled_runs,
    resume_runs_of_started_jobs,
)
from tasks.job_tasks import announce
from tasks.models import System
from tasks.retries import cluster_task
from tasks.store import open_job_store
from tasks.tracking import TrackedJob, observe, record_observation


class SystemSweep(BaseModel):
    """What one sweep saw on one system."""

    system: str
    active: int
    changed: int
    statuses: dict[str, int]


@cluster_task
def sweep_system(system: str) -> SystemSweep:
    """Observe all active jobs of `system` in one scheduler call and record what changed.

    Example:
        ```python
        sweep_system("local").statuses  # {'RUNNING': 2, 'COMPLETED': 1}
        ```
    """
    logger = get_run_logger()
    store = open_job_store()
    scheduler = scheduler_for(system)
    records = store.active(system)
    observations = observe(scheduler, [TrackedJob.from_record(record) for record in records])
    changed, statuses = 0, Counter[str]()
    for record, observation in zip(records, observations):
        transition = record_observation(store, record, observation)
        now = transition.record if transition else record
        statuses[now.status.value] += 1
        if transition is not None and transition.moved:
            changed += 1
            logger.info("%s job %s (%s): %s -> %s", system, now.scheduler_job_id, now.id, transition.previous.value, now.status.value)
            announce(store, scheduler, transition)
    return SystemSweep(system=system, active=len(records), changed=changed, statuses=dict(statuses))


@flow(name="watch-jobs")
def watch_jobs(system: System | None = None) -> list[SystemSweep]:
    """Sweep active jobs: one scheduler call per system, store and progress updated, an event per change.

    Then keep flow runs that no process holds in step with their jobs: suspended `submit-job`
    runs whose job started or ended are resumed, and a job whose flow run was cancelled while
    suspended is cancelled in its scheduler.

    Args:
        system: Only this system; every system with active jobs when None.

    Example:
        ```python
        from flows.watch import watch_jobs
        watch_jobs()  # [SystemSweep(system='local', active=3, changed=1, ...)]
        ```
    """
    systems = [system.value] if system else sorted({record.system for record in open_job_store().active()})
    sweeps = [sweep_system(name, return_state=True) for name in systems]  # one failing system stops none of the rest
    syncs = [cancel_jobs_of_cancelled_runs(return_state=True), resume_runs_of_started_jobs(return_state=True)]
    for state in [*sweeps, *syncs]:
        state.result()  # then the first failure fails the run
    return [state.result() for state in sweeps]
