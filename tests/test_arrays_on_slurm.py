"""A batch of whole-node requests on the sandbox Slurm over SSH, as on a TACC system saved as
block `ls6`: one `sbatch --array=0-4%3`, each record tracked, cancelled and charged by its own
task `<id>_<i>`; and the backend's task-level poll and cancel."""

from __future__ import annotations

import posixpath
import subprocess
import uuid
from typing import Any

import pytest

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.batch import submit_batch
from flows.cancel import cancel_job
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import allocation_dir
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tasks.tracking import sweep_system
from tests.conftest import Sandbox, wait_until


def request(user: str, strategy: str, **params: Any) -> dict[str, Any]:
    # gpu-a100-small: one GPU per node, 3 jobs per user: a one-GPU request fills its node
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 1,
        "max_runtime": "00:05:00",
        "user_id": user,
        "system": "ls6",
        "queue": "gpu-a100-small",
        "params": {"rfi_strategy": strategy, "step_seconds": 0.5, **params},
    }


def accounted(job_id: str) -> list[list[str]]:
    output = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--allusers", "-j", job_id, "-o", "JobID,State,Start,End,JobName"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.split("|") for line in output.stdout.splitlines()]


@pytest.mark.usefixtures("prefect_server", "ls6_block")
def test_a_batch_of_whole_node_requests_on_slurm_is_one_array_of_tasks() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    strategies = ["low", "medium", "high"]
    requests = [request(user, strategy) for strategy in strategies]
    requests.append(request(user, "medium", step_seconds="not-a-number"))  # the agent rejects it: exit code 1
    requests.append(request(user, "high", step_seconds=10))  # long enough to be cancelled while it runs
    submitted = submit_batch(requests, parallel_limit=2, wait=False)
    name = submitted[0].allocation_name
    array = (submitted[0].scheduler_job_id or "").split("_")[0]
    assert name and [record.scheduler_job_id for record in submitted] == [f"{array}_{index}" for index in range(5)]
    store = open_job_store()
    long = submitted[4]
    wait_until(lambda: sweep_system("ls6") and store.get(long.id).status is JobStatus.RUNNING, timeout=180, interval=1)
    assert cancel_job(long.id).status is JobStatus.CANCELLED

    def ended() -> list[JobRecord] | None:
        sweep_system("ls6")
        records = [store.get(record.id) for record in submitted]
        return records if all(record.status.is_terminal for record in records) else None

    records = wait_until(ended, timeout=300, interval=2)
    assert [record.status for record in records] == [JobStatus.COMPLETED] * 3 + [JobStatus.FAILED, JobStatus.CANCELLED]
    assert records[3].reason == "exit code 1"
    assert [record.result["rfi_strategy"] for record in records[:3]] == strategies, "each task ran its own request"
    rows = wait_until(lambda: [row for row in accounted(array) if row[3] not in ("Unknown", "")], timeout=60)
    assert {row[4] for row in rows} == {name} and sorted(row[0] for row in rows) == [
        f"{array}_{index}" for index in range(5)
    ], "one sbatch: five tasks of one array, all named after it"
    states = {row[0]: row for row in rows}
    assert states[f"{array}_4"][1].startswith("CANCELLED") and states[f"{array}_3"][1] == "FAILED"
    slurm = scheduler_for("ls6")
    seen = slurm.states({record.scheduler_job_id: name for record in records})
    spec = find_queue("ls6", "gpu-a100-small")
    for record in records[:4]:  # a cancelled one, as a cancelled single job, is not charged by the orchestrator
        state = seen[record.scheduler_job_id]
        assert record.charged_su == charge_su(spec, 1, state.end - state.start), "its own node for its own run time"
    runs = [(state.start, state.end) for state in seen.values()]
    assert all(sum(start <= moment < end for start, end in runs) <= 3 for moment, _ in runs), (
        "at most 3 tasks at once (%3)"
    )
    script = posixpath.join(allocation_dir(slurm.scratch_root, name), "job.sbatch")
    assert "#SBATCH --array 0-4%3" in slurm.read_files({script: 0})[script].data, (
        "throttled to gpu-a100-small's 3-job cap"
    )


def test_the_slurm_backend_polls_and_cancels_array_tasks_one_by_one(slurm: SlurmScheduler, sandbox: Sandbox) -> None:
    name = f"tacc-{uuid.uuid4().hex}"
    work_dir = f"{slurm.scratch_root}/array"
    submission = JobSubmission(
        name=name,
        script="#!/bin/bash\nsleep 30\n",
        work_dir=work_dir,
        stdout_path=f"{work_dir}/out-%a.log",
        stderr_path=f"{work_dir}/err-%a.log",
        sbatch_args=["-p", "gpu-a100-small", "-N", "1", "-t", "00:02:00", "-A", sandbox.account, "--array", "0-4%2"],
    )
    array = slurm.submit(submission)
    assert array.isdigit() and slurm.submit(submission) == array, "a retry adopts the array by its name"
    tasks = {f"{array}_{index}": name for index in range(5)}
    states = wait_until(
        lambda: (found := slurm.states(tasks)) and found[f"{array}_0"].state == "RUNNING" and found, timeout=60
    )
    assert set(states) == set(tasks), "running tasks and those pending behind the throttle, each by its own id"
    assert [states[f"{array}_{index}"].state for index in range(2, 5)] == ["PENDING"] * 3
    assert states[f"{array}_4"].reason == "JobArrayTaskLimit"
    slurm.cancel(f"{array}_3", "tacc-someone-else")  # another name under the id: not ours, left alone
    slurm.cancel(f"{array}_3", name)  # a pending task alone (scancel --name would cancel every pending task)
    slurm.cancel(f"{array}_0", name)  # a running one
    states = wait_until(
        lambda: (found := slurm.states(tasks)) and found[f"{array}_0"].state.startswith("CANCELLED") and found,
        timeout=60,
    )
    assert f"{array}_3" not in states, (
        "Slurm 22.05 keeps no trace of a pending task cancelled alone (its record is CANCELLED by us)"
    )
    assert states[f"{array}_4"].state in ("PENDING", "RUNNING") and states[f"{array}_1"].state == "RUNNING"
    assert slurm.find([name], states[f"{array}_1"].submit)[name].job_id.split("_")[0] == array
    subprocess.run(["scancel", array], check=False)
    ended = wait_until(
        lambda: (found := slurm.states(tasks)) and all(state.end for state in found.values()) and found, timeout=90
    )
    assert set(ended) == set(tasks) - {f"{array}_3"}, (
        "a task the array's cancel ended before it started is still answered for"
    )
    assert ended[f"{array}_4"].state.startswith("CANCELLED")
