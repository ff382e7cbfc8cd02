"""Supervisor of one embedded-cluster job: wait for nodes, run, enforce wall time, record.

Started detached by `LocalScheduler.submit` as `python -m tacc_jobs.schedulers.local_supervisor ROOT ID`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tacc_jobs.schedulers.local import (
    ARRAY_TASK_LIMIT_REASON,
    TERMINAL_STATES,
    LocalJob,
    LocalScheduler,
)
from tacc_jobs.walltime import utcnow

KILL_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.2


def _claim_nodes(cluster: LocalScheduler, job_id: str, job: LocalJob) -> bool:
    """Mark the job RUNNING when its nodes are free (and, for an array task, fewer than the
    array's throttle of its other tasks run); False when it was cancelled while waiting."""
    while True:
        with cluster.locked():
            state = cluster.read_state(job_id)
            if state["state"] in TERMINAL_STATES or state["state"].startswith("CANCELLED"):
                return False
            throttled = job.array_job_id is not None and not cluster.array_task_may_start(job)
            if not throttled and cluster.allocated_nodes() + job.nodes <= cluster.total_nodes:
                state.update(state="RUNNING", reason="None", start=utcnow().isoformat(), supervisor_pid=os.getpid())
                cluster.write_state(job_id, state)
                cluster.set_running(job_id, job.nodes)
                return True
            reason = ARRAY_TASK_LIMIT_REASON if throttled else "Resources"
            if state.get("reason") != reason:
                state["reason"] = reason
                cluster.write_state(job_id, state)
        time.sleep(POLL_SECONDS)


def _job_environment(cluster: LocalScheduler, job_id: str) -> dict[str, str]:
    job = cluster.load_job(job_id)
    return {
        **os.environ,
        "SLURM_JOB_ID": job_id,
        "SLURM_JOB_NAME": job.name,
        "SLURM_JOB_PARTITION": job.partition,
        "SLURM_JOB_NUM_NODES": str(job.nodes),
        "SLURM_NNODES": str(job.nodes),
        "SLURM_SUBMIT_DIR": job.work_dir,
        **(
            {
                "SLURM_ARRAY_JOB_ID": job.array_job_id,
                "SLURM_ARRAY_TASK_ID": str(job.array_task_id),
                "SLURM_ARRAY_TASK_COUNT": str(len(job.array_tasks)),
                "SLURM_ARRAY_TASK_MIN": str(min(job.array_tasks)),
                "SLURM_ARRAY_TASK_MAX": str(max(job.array_tasks)),
            }
            if job.array_job_id is not None
            else {}
        ),
    }


def supervise(cluster: LocalScheduler, job_id: str) -> None:
    """Run one job to its end and record how it ended."""
    job = cluster.load_job(job_id)
    if not _claim_nodes(cluster, job_id, job):
        return
    with open(job.stdout_path, "ab") as stdout, open(job.stderr_path, "ab") as stderr:
        process = subprocess.Popen(
            ["/bin/bash", job.script_path],
            cwd=job.work_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=_job_environment(cluster, job_id),
            start_new_session=True,
        )
    with cluster.locked():
        state = cluster.read_state(job_id)
        state["pgid"] = process.pid
        cluster.write_state(job_id, state)
        cancelled_before_start = state["state"].startswith("CANCELLED")
    if cancelled_before_start:
        os.killpg(process.pid, signal.SIGTERM)
    timed_out = False
    try:
        returncode = process.wait(timeout=job.time_limit_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGTERM)
        try:
            returncode = process.wait(timeout=KILL_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            returncode = process.wait()
    with cluster.locked():
        state = cluster.read_state(job_id)
        if not state["state"].startswith("CANCELLED"):
            if timed_out:
                state.update(state="TIMEOUT", exit_code="0:15")
            elif returncode == 0:
                state.update(state="COMPLETED", exit_code="0:0")
            elif returncode < 0:
                state.update(state="FAILED", exit_code=f"0:{-returncode}")
            else:
                state.update(state="FAILED", exit_code=f"{returncode}:0")
            state["end"] = utcnow().isoformat()
        cluster.write_state(job_id, state)
        cluster.set_running(job_id, None)


def main() -> None:
    root, job_id = Path(sys.argv[1]), sys.argv[2]
    supervise(LocalScheduler(root), job_id)


if __name__ == "__main__":
    main()
