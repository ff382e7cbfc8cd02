"""Slurm states mapped to the store's status and reason."""

import pytest

from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.states import map_slurm_state

Q, R, C, F, X = JobStatus.QUEUING, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED


@pytest.mark.parametrize(
    ("state", "exit_code", "reason", "expected"),
    [
        ("PENDING", None, "Priority", (Q, "Priority")),
        ("PD", None, "QOSMaxJobsPerUserLimit", (Q, "QOSMaxJobsPerUserLimit")),
        ("PENDING", None, "None", (Q, None)),
        ("CONFIGURING", None, None, (Q, "CONFIGURING")),
        ("REQUEUED", None, None, (Q, "REQUEUED")),
        ("REQUEUE_HOLD", None, "JobHeldAdmin", (Q, "REQUEUE_HOLD")),
        ("SPECIAL_EXIT", "3:0", None, (Q, "SPECIAL_EXIT")),
        ("RUNNING", None, None, (R, None)),
        ("R", None, None, (R, None)),
        ("COMPLETING", None, None, (R, None)),
        ("SUSPENDED", None, None, (R, "SUSPENDED")),
        ("COMPLETED", "0:0", None, (C, None)),
        ("CD", "0:0", None, (C, None)),
        ("FAILED", "3:0", None, (F, "exit code 3")),
        ("FAILED", "0:9", None, (F, "killed by signal 9")),
        ("CANCELLED by 1000", "0:15", None, (X, "cancelled by uid 1000")),
        ("CANCELLED+", None, None, (X, "cancelled")),
        ("TIMEOUT", "0:15", None, (F, "TIMEOUT")),
        ("NODE_FAIL", None, None, (F, "NODE_FAIL")),
        ("PREEMPTED", None, None, (F, "PREEMPTED")),
        ("OUT_OF_MEMORY", "0:125", None, (F, "OUT_OF_MEMORY")),
        ("OOM", None, None, (F, "OUT_OF_MEMORY")),
        ("BOOT_FAIL", None, None, (F, "BOOT_FAIL")),
        ("DEADLINE", None, None, (F, "DEADLINE")),
    ],
)
def test_slurm_states(
    state: str, exit_code: str | None, reason: str | None, expected: tuple[JobStatus, str | None]
) -> None:
    assert map_slurm_state(state, exit_code, reason) == expected


@pytest.mark.parametrize("state", ["NODE_FAIL", "PREEMPTED", "NF"])
def test_an_end_slurm_may_requeue_is_waiting_while_the_controller_holds_the_job(state: str) -> None:
    assert map_slurm_state(state, in_queue=True)[0] is Q
    assert map_slurm_state(state, in_queue=False)[0] is F


@pytest.mark.parametrize(
    "state", ["", "EXPLODED", "LAUNCH_FAILED", "RECONFIG_FAIL", "POWER_UP_NODE", "UPDATE_DB", "EXPEDITING"]
)
def test_unknown_states_keep_the_job_as_it_is_and_quote_slurm(state: str) -> None:
    status, reason = map_slurm_state(state)
    assert status is None and (state in (reason or "") or reason == "empty Slurm state")
