"""The flows against the sandbox Slurm over SSH, as against a TACC system saved as block `ls6`."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from prefect import get_client
from prefect.exceptions import ParameterTypeError
from prefect.states import Cancelled

from blocks.database import open_job_store
from flows.stage import stage_dataset, staging_status
from flows.submit import cancel_scheduler_job, submit_job
from flows.watch import watch_jobs
from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.store import StagingStatus
from tests.conftest import SCRATCH, Sandbox, accounted, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server", "ls6_block")


def request(**fields: Any) -> dict[str, Any]:
    params = {"rfi_strategy": "medium", "step_seconds": 0.2, **fields.pop("params", {})}
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 3,
        "max_runtime": "00:05:00",
        "user_id": f"u{uuid.uuid4().hex[:8]}",
        "system": "ls6",
        "params": params,
        **fields,
    }


def test_submit_job_on_slurm_stages_then_submits_and_completes(sandbox: Sandbox) -> None:
    record = submit_job(request(priority="high"))
    assert record.status is JobStatus.COMPLETED and record.progress == 1.0
    assert (record.system, record.queue, record.nodes) == ("ls6", "gpu-a100", 1)
    assert record.result["samples"] == 12000 and record.result["rfi_strategy"] == "medium"
    assert record.charged_su == 1 * 0.25 * 4
    staged = staging_status("VLASS2.1.eb123456", "ls6")
    assert (
        staged.status is StagingStatus.STAGED
        and staged.path == f"{SCRATCH.format(user=sandbox.user)}/datasets/VLASS2.1.eb123456"
    )
    assert staged.finished_at.replace(microsecond=0) <= record.started_at, (
        "staged before it started (Slurm keeps whole seconds)"
    )
    # slurmdbd fills in a fast job's record a moment after it ends ("allocation", no partition)
    name = scheduler_job_name(record.id)
    wait_until(
        lambda: accounted(record.scheduler_job_id, name, "JobName,Account,Partition") == f"{name}|sandbox|gpu-a100",
        timeout=90,
        interval=1,
    )


def test_cancelling_the_flow_run_reaches_scancel() -> None:
    record = submit_job(request(params={"step_seconds": 5}), wait=False)
    wait_until(
        lambda: watch_jobs("ls6") and open_job_store().get(record.id).status is JobStatus.RUNNING,
        timeout=60,
        interval=1,
    )
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(record.flow_run_id)
    cancel_scheduler_job(submit_job, flow_run, Cancelled())
    assert open_job_store().get(record.id).status is JobStatus.CANCELLED
    wait_until(
        lambda: accounted(record.scheduler_job_id, scheduler_job_name(record.id)).startswith("CANCELLED"),
        timeout=90,
        interval=1,
    )


def test_stage_dataset_flow_and_traversal_refusal() -> None:
    staged = stage_dataset("VLASS2.1.eb123456", "ls6", priority="high")
    assert staged.status is StagingStatus.STAGED and staged.files == 8 and staged.priority == "high"
    with pytest.raises(ParameterTypeError, match="dataset_id"):
        stage_dataset("../../etc", "ls6")


@contextmanager
def submit_cap(sandbox: Sandbox, jobs: int) -> Iterator[None]:
    """The sandbox user's association may have `jobs` jobs queued or running (sbatch refuses more,
    as TACC's queues do past their per-user cap); no cap afterwards."""

    def cap(value: int) -> None:
        sacctmgr = ["sacctmgr", "-i", "modify", "user", "where", f"name={sandbox.user}", f"account={sandbox.account}"]
        subprocess.run([*sacctmgr, "set", f"MaxSubmitJobs={value}"], check=True, capture_output=True, timeout=60)

    cap(jobs)
    try:
        yield
    finally:
        cap(-1)


def test_sbatch_refusing_a_job_over_the_users_cap_leaves_it_waiting_then_it_runs(sandbox: Sandbox) -> None:
    """The store counts the orchestrator's jobs; Slurm also counts the user's own. Its refusal
    (AssocMaxSubmitJobLimit) keeps the job QUEUED, waiting for a slot, and it is submitted once
    the first job has left the queue: never FAILED."""
    user = f"cap{uuid.uuid4().hex[:6]}"
    store, outcome = open_job_store(), {}
    with submit_cap(sandbox, 1):
        first = submit_job(request(user_id=user, params={"step_seconds": 1.5}), wait=False)
        second = threading.Thread(target=lambda: outcome.setdefault("record", submit_job(request(user_id=user))))
        second.start()
        waiting = wait_until(
            lambda: [r for r in store.history(user).items if r.id != first.id and r.reason], timeout=60, interval=0.5
        )
        assert waiting[0].status is JobStatus.QUEUED and waiting[0].scheduler_job_id is None
        assert waiting[0].reason.startswith("waiting for a slot on gpu-a100: sbatch") and (
            "AssocMaxSubmitJobLimit" in waiting[0].reason
        ), waiting[0].reason
        second.join(timeout=180)
    record = outcome["record"]
    assert record.status is JobStatus.COMPLETED, record
    # slurmdbd writes a job's record a moment after slurmctld knows it
    first_end = wait_until(lambda: accounted(first.scheduler_job_id, scheduler_job_name(first.id), "End"), 90, 1)
    second_submit = wait_until(
        lambda: accounted(record.scheduler_job_id, scheduler_job_name(record.id), "Submit"), 90, 1
    )
    assert first_end and second_submit >= first_end, (first_end, second_submit)
