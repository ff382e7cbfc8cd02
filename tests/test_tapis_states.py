"""Every Tapis job status maps to a store status with a reason; holds are not failures."""

from __future__ import annotations

import typing

import pytest

from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.states import map_tapis_status
from tacc_jobs.tapis.models import TapisStatus

EXPECTED = {
    "PENDING": (JobStatus.QUEUING, "PENDING"),
    "PROCESSING_INPUTS": (JobStatus.QUEUING, "PROCESSING_INPUTS"),
    "STAGING_INPUTS": (JobStatus.QUEUING, "STAGING_INPUTS"),
    "STAGING_JOB": (JobStatus.QUEUING, "STAGING_JOB"),
    "SUBMITTING_JOB": (JobStatus.QUEUING, "SUBMITTING_JOB"),
    "QUEUED": (JobStatus.QUEUING, "QUEUED"),
    "RUNNING": (JobStatus.RUNNING, "RUNNING"),
    "ARCHIVING": (JobStatus.RUNNING, "ARCHIVING"),
    "BLOCKED": (JobStatus.QUEUING, "BLOCKED: SSH connection lost"),
    "PAUSED": (JobStatus.QUEUING, "PAUSED: paused by the tenant"),
    "FINISHED": (JobStatus.COMPLETED, "FINISHED"),
    "CANCELLED": (JobStatus.CANCELLED, "cancelled (CANCELLED_BY_USER)"),
    "FAILED": (JobStatus.FAILED, "JOB_UNABLE_TO_STAGE_INPUTS: input not found"),
}
CONTEXT = {"BLOCKED": ("SSH connection lost", None), "PAUSED": ("paused by the tenant", None), "CANCELLED": (None, "CANCELLED_BY_USER"),
           "FAILED": ("input not found", "JOB_UNABLE_TO_STAGE_INPUTS")}


def test_every_status_of_tapiss_schema_is_mapped() -> None:
    assert set(typing.get_args(TapisStatus)) == set(EXPECTED)


@pytest.mark.parametrize("status", sorted(EXPECTED))
def test_status_maps_with_a_reason(status: str) -> None:
    message, condition = CONTEXT.get(status, (None, None))
    assert map_tapis_status(status, condition, message) == EXPECTED[status]


@pytest.mark.parametrize("status", ["BLOCKED", "PAUSED"])
def test_a_hold_keeps_a_started_job_running(status: str) -> None:
    assert map_tapis_status(status, message="held", started=True) == (JobStatus.RUNNING, f"{status}: held")


@pytest.mark.parametrize(("condition", "exit_code", "reason"), [
    ("SCHEDULER_TIMEOUT", None, "TIMEOUT"), ("SCHEDULER_OUT_OF_MEMORY", None, "OUT_OF_MEMORY"),
    ("JOB_REMOTE_OUTCOME_ERROR", "3:0", "exit code 3"), ("JOB_REMOTE_OUTCOME_ERROR", "0:9", "killed by signal 9"),
])
def test_failures_carry_their_cause(condition: str, exit_code: str | None, reason: str) -> None:
    assert map_tapis_status("FAILED", condition, exit_code=exit_code) == (JobStatus.FAILED, reason)
