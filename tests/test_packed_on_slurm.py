"""A packed batch on the sandbox Slurm over SSH, as on a TACC system saved as block `ls6`: one
sbatch, members as srun steps on their own GPUs, a work pile, one member failing and one cancelled."""

from __future__ import annotations

import subprocess
import uuid
from typing import Any

import pytest

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.batch import submit_batch
from flows.cancel import cancel_job
from tacc_jobs.launcher import MemberStatus
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.tracking import member_status_path
from tasks.tracking import sweep_system
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("prefect_server", "ls6_block")


def request(user: str, max_runtime: str, **params: Any) -> dict[str, Any]:
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 1,
        "max_runtime": max_runtime,
        "user_id": user,
        "system": "ls6",
        "queue": "gpu-a100",
        "params": {"rfi_strategy": "medium", "step_seconds": 0.5, **params},
    }


def slurm_jobs(name: str) -> list[str]:
    output = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--allusers", f"--name={name}", "-o", "JobID"], capture_output=True, text=True
    )
    return output.stdout.split()


def test_a_packed_batch_on_slurm_runs_its_members_as_steps_of_one_job() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    # one 10-minute request and four 5-minute ones stack onto one 3-GPU node: three start, two wait in the pile
    requests = [request(user, "00:10:00", step_seconds=5)] + [request(user, "00:05:00") for _ in range(3)]
    requests.append(request(user, "00:05:00", step_seconds="not-a-number"))
    submitted = submit_batch(requests, parallel_limit=2, wait=False)
    name = submitted[0].allocation_name
    assert name and {record.allocation_name for record in submitted} == {name}
    assert {record.allocation_nodes for record in submitted} == {1}
    store = open_job_store()
    long = submitted[0]
    wait_until(lambda: sweep_system("ls6") and store.get(long.id).status is JobStatus.RUNNING, timeout=120, interval=1)
    assert cancel_job(long.id).status is JobStatus.CANCELLED

    def charged() -> list[JobRecord] | None:
        sweep_system("ls6")
        records = [store.get(record.id) for record in submitted]
        return (
            records if all(record.status.is_terminal and record.charged_su is not None for record in records) else None
        )

    records = wait_until(charged, timeout=300, interval=2)
    assert [record.status for record in records] == [JobStatus.CANCELLED] + [JobStatus.COMPLETED] * 3 + [
        JobStatus.FAILED
    ]
    assert records[4].reason == "exit code 1"
    assert slurm_jobs(name) == [records[0].scheduler_job_id], "one sbatch for the whole batch"
    slurm = scheduler_for("ls6")
    files = slurm.read_files({member_status_path(record.work_dir): 0 for record in records})
    statuses = [MemberStatus.model_validate_json(files[member_status_path(record.work_dir)].data) for record in records]
    assert statuses[0].state == "CANCELLED" and statuses[0].gpus, "the cancelled member had started"
    assert all(status.node == "vm" and len(status.gpus) == 1 for status in statuses)
    for first in range(len(statuses)):
        for second in range(first + 1, len(statuses)):
            a, b = statuses[first], statuses[second]
            if a.start < b.end and b.start < a.end:
                assert a.gpus != b.gpus, "members running at once have their own GPUs"
    assert all(
        record.result["allocation"]["gpus"] == status.gpus for record, status in zip(records[1:4], statuses[1:4])
    )
    state = slurm.states({records[0].scheduler_job_id: name})[records[0].scheduler_job_id]
    assert state.state == "COMPLETED"
    assert round(sum(record.charged_su for record in records), 4) == charge_su(
        find_queue("ls6", "gpu-a100"), 1, state.end - state.start
    )
    steps = subprocess.run(
        ["sacct", "-n", "-P", "--allusers", "-j", records[0].scheduler_job_id, "-o", "JobName"],
        capture_output=True,
        text=True,
    ).stdout.split()
    assert {f"tacc-{record.id.hex}" for record in records[:4]} <= set(steps), (
        "each member ran as an srun step named after it"
    )
