"""The flows against the sandbox Slurm over SSH, as against a TACC system saved as block `ls6`."""

from __future__ import annotations

import subprocess
import uuid
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
from tacc_jobs.store import StagingStatus
from tests.conftest import SCRATCH, Sandbox, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server", "ls6_block")


def request(**fields: Any) -> dict[str, Any]:
    params = {"rfi_strategy": "medium", "step_seconds": 0.2, **fields.pop("params", {})}
    return {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 3, "max_runtime": "00:05:00",
            "user_id": f"u{uuid.uuid4().hex[:8]}", "system": "ls6", "params": params, **fields}


def sacct_state(job_id: str) -> str:
    return subprocess.run(["sacct", "-n", "-X", "-P", "--allusers", "-j", job_id, "-o", "State"], capture_output=True, text=True).stdout.strip()


def test_submit_job_on_slurm_stages_then_submits_and_completes(sandbox: Sandbox) -> None:
    record = submit_job(request(priority="high"))
    assert record.status is JobStatus.COMPLETED and record.progress == 1.0
    assert (record.system, record.queue, record.nodes) == ("ls6", "gpu-a100", 1)
    assert record.result["samples"] == 12000 and record.result["rfi_strategy"] == "medium"
    assert record.charged_su == 1 * 0.25 * 4
    staged = staging_status("VLASS2.1.eb123456", "ls6")
    assert staged.status is StagingStatus.STAGED and staged.path == f"{SCRATCH.format(user=sandbox.user)}/datasets/VLASS2.1.eb123456"
    assert staged.finished_at.replace(microsecond=0) <= record.started_at, "staged before it started (Slurm keeps whole seconds)"
    def accounted() -> str:  # slurmdbd fills in a fast job's record a moment after it ends ("allocation", no partition)
        return subprocess.run(["sacct", "-n", "-X", "-P", "--allusers", "-j", record.scheduler_job_id, "-o", "JobName,Account,Partition"],
                              capture_output=True, text=True).stdout.strip()

    expected = f"tacc-{record.id.hex}|sandbox|gpu-a100"
    wait_until(lambda: accounted() == expected, timeout=30, interval=0.5)


def test_cancelling_the_flow_run_reaches_scancel() -> None:
    record = submit_job(request(params={"step_seconds": 5}), wait=False)
    wait_until(lambda: watch_jobs("ls6") and open_job_store().get(record.id).status is JobStatus.RUNNING, timeout=60, interval=1)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(record.flow_run_id)
    cancel_scheduler_job(submit_job, flow_run, Cancelled())
    assert open_job_store().get(record.id).status is JobStatus.CANCELLED
    wait_until(lambda: sacct_state(record.scheduler_job_id).startswith("CANCELLED"), timeout=30, interval=1)


def test_stage_dataset_flow_and_traversal_refusal() -> None:
    staged = stage_dataset("VLASS2.1.eb123456", "ls6", priority="high")
    assert staged.status is StagingStatus.STAGED and staged.files == 8 and staged.priority == "high"
    with pytest.raises(ParameterTypeError, match="dataset_id"):
        stage_dataset("../../etc", "ls6")
