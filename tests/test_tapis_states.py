"""Every Tapis job status maps to a store status with a reason; holds are not failures."""

from __future__ import annotations

import typing

import pytest

from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.states import map_tapis_status
from tacc_jobs.tapis.models import TapisStatus

# status, its condition and last message, then the store's status and reason
CASES = [
    ("PENDING", None, None, JobStatus.QUEUING, "PENDING"),
    ("PROCESSING_INPUTS", None, None, JobStatus.QUEUING, "PROCESSING_INPUTS"),
    ("STAGING_INPUTS", None, None, JobStatus.QUEUING, "STAGING_INPUTS"),
    ("STAGING_JOB", None, None, JobStatus.QUEUING, "STAGING_JOB"),
    ("SUBMITTING_JOB", None, None, JobStatus.QUEUING, "SUBMITTING_JOB"),
    ("QUEUED", None, None, JobStatus.QUEUING, "QUEUED"),
    ("RUNNING", None, None, JobStatus.RUNNING, "RUNNING"),
    ("ARCHIVING", None, None, JobStatus.RUNNING, "ARCHIVING"),
    ("BLOCKED", None, "SSH connection lost", JobStatus.QUEUING, "BLOCKED: SSH connection lost"),
    ("PAUSED", None, "paused by the tenant", JobStatus.QUEUING, "PAUSED: paused by the tenant"),
    ("FINISHED", "NORMAL_COMPLETION", None, JobStatus.COMPLETED, "FINISHED"),
    ("CANCELLED", "CANCELLED_BY_USER", None, JobStatus.CANCELLED, "cancelled (CANCELLED_BY_USER)"),
    (
        "FAILED",
        "JOB_UNABLE_TO_STAGE_INPUTS",
        "input not found",
        JobStatus.FAILED,
        "JOB_UNABLE_TO_STAGE_INPUTS: input not found",
    ),
]


def test_every_status_of_tapiss_schema_is_mapped() -> None:
    assert {case[0] for case in CASES} == set(typing.get_args(TapisStatus))


@pytest.mark.parametrize(("status", "condition", "message", "store_status", "reason"), CASES)
def test_status_maps_with_a_reason(
    status: str, condition: str | None, message: str | None, store_status: JobStatus, reason: str
) -> None:
    assert map_tapis_status(status, condition, message) == (store_status, reason)


@pytest.mark.parametrize("status", ["BLOCKED", "PAUSED"])
def test_a_hold_keeps_a_started_job_running(status: str) -> None:
    assert map_tapis_status(status, message="held", started=True) == (JobStatus.RUNNING, f"{status}: held")


@pytest.mark.parametrize(
    ("condition", "exit_code", "reason"),
    [
        ("SCHEDULER_TIMEOUT", None, "TIMEOUT"),
        ("SCHEDULER_OUT_OF_MEMORY", None, "OUT_OF_MEMORY"),
        ("JOB_REMOTE_OUTCOME_ERROR", "3:0", "exit code 3"),
        ("JOB_REMOTE_OUTCOME_ERROR", "0:9", "killed by signal 9"),
    ],
)
def test_failures_carry_their_cause(condition: str, exit_code: str | None, reason: str) -> None:
    assert map_tapis_status("FAILED", condition, exit_code=exit_code) == (JobStatus.FAILED, reason)
