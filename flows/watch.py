"""watch-jobs: one sweep over every active job, one scheduler call per system."""

from __future__ import annotations

from prefect import flow, get_run_logger

from blocks.database import open_job_store
from tacc_jobs.models import System
from tasks.flow_run_sync import (
    cancel_jobs_of_cancelled_runs,
    finish_crashed_runs_of_ended_jobs,
    resume_runs_of_started_jobs,
)
from tasks.tracking import SystemSweep, sweep_system


@flow(name="watch-jobs")
def watch_jobs(system: System | None = None) -> list[SystemSweep]:
    """Sweep active jobs: one scheduler call per system, store and progress updated, an event per change.

    Then keep flow runs that no process holds in step with their jobs: suspended `submit-job`
    runs whose job started or ended are resumed, a job whose flow run was cancelled while
    suspended is cancelled in its scheduler, and a run that crashed (its job ran on: a crash is
    not a cancel) ends as its job ended.

    One sweep at a time: a run that finds another sweeping ends at once (the job store's lock,
    which dies with its holder; a deployment concurrency slot outlived a killed run or a
    restarted server and cancelled every later sweep).

    Args:
        system: Only this system; every system with active jobs when None.

    Example:
        ```python
        from flows.watch import watch_jobs
        watch_jobs()  # [SystemSweep(system='local', active=3, changed=1, ...)]
        ```
    """
    store = open_job_store()
    with store.exclusive("watch-jobs") as mine:
        if not mine:
            get_run_logger().info("Another watch-jobs sweep is running; this one leaves the jobs to it")
            return []
        systems = [system.value] if system else sorted({record.system for record in store.unfinished()})
        sweeps = [
            sweep_system(name, return_state=True) for name in systems
        ]  # one failing system stops none of the rest
        syncs = [
            cancel_jobs_of_cancelled_runs(return_state=True),
            resume_runs_of_started_jobs(return_state=True),
            finish_crashed_runs_of_ended_jobs(return_state=True),
        ]
        for state in [*sweeps, *syncs]:
            state.result()  # then the first failure fails the run
        return [state.result() for state in sweeps]
