"""Issue 16's acceptance: a batch of single-GPU requests packed onto whole nodes runs end to end,
on the embedded cluster and on the sandbox Slurm saved as Stampede3, each request on GPUs of its
own that its agent checks (AlphaCal refuses to run unless it sees exactly the GPUs it asked for)."""

from __future__ import annotations

import subprocess
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from blocks.credentials import TaccCredentials
from flows.batch import submit_batch
from flows.plan_batch import plan_batch
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tests.conftest import SCRATCH, Sandbox

pytestmark = pytest.mark.usefixtures("prefect_server")


def request(user: str, system: str, queue: str, max_runtime: str) -> dict[str, Any]:
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 1,
        "max_runtime": max_runtime,
        "user_id": user,
        "system": system,
        "queue": queue,
        "params": {"rfi_strategy": "low", "step_seconds": 0.2},
    }


def assert_each_ran_on_its_own_gpus(records: list[JobRecord]) -> None:
    """Every record COMPLETED; its agent saw one GPU; members that overlapped on a node never shared one."""
    assert [record.status for record in records] == [JobStatus.COMPLETED] * len(records), [r.reason for r in records]
    runs: dict[tuple[str, str], list[tuple[datetime, datetime, str]]] = defaultdict(list)
    for record in records:
        seen, placement = record.result["visible_gpus"], record.result["allocation"]
        assert len(seen) == 1 and [int(seen[0])] == placement["gpus"], record.result
        runs[(placement["name"], placement["node"])].append((record.started_at, record.completed_at, seen[0]))
    for members in runs.values():
        for index, (start, end, gpu) in enumerate(members):
            assert not any(
                start < other_end and other_start < end and gpu == other_gpu
                for other_start, other_end, other_gpu in members[index + 1 :]
            ), members


def assert_charges_split(records: list[JobRecord]) -> dict[str, float]:
    """Each allocation's members carry shares of one charge: its whole nodes for the time it ran."""
    by_allocation: dict[str, list[JobRecord]] = defaultdict(list)
    for record in records:
        by_allocation[record.allocation_name].append(record)
    charges = {}
    for name, members in by_allocation.items():
        charges[name] = round(sum(member.charged_su for member in members), 4)
        assert all(member.charged_su > 0 and member.gpu_seconds > 0 for member in members)
        floor = charge_su(find_queue(members[0].system, members[0].queue), members[0].allocation_nodes, timedelta(0))
        assert charges[name] >= floor > 0, "whole nodes, at least TACC's 15-minute minimum"
    return charges


def test_24_single_gpu_requests_plan_to_a_quarter_of_the_sus_and_run_packed_on_the_embedded_cluster() -> None:
    user = f"acc{uuid.uuid4().hex[:6]}"
    plan = plan_batch([request(user, "stampede3", "h100", "1h") for _ in range(24)])
    assert (plan.packed.su, plan.one_per_request.su, plan.packed.slurm_jobs) == (24.0, 96.0, 2)
    assert (plan.one_per_request.makespan.total_seconds(), plan.packed.makespan.total_seconds()) == (12 * 3600, 3600)

    records = submit_batch([request(user, "local", "local-gpu", "1h") for _ in range(24)], parallel_limit=2)
    assert len({record.allocation_name for record in records}) == 3, (
        "24 one-GPU requests: 3 allocations of 2 four-GPU nodes"
    )
    assert len({record.scheduler_job_id for record in records}) == 3, "3 scheduler jobs instead of 24"
    assert_each_ran_on_its_own_gpus(records)
    charges = assert_charges_split(records)
    print(
        f"embedded cluster: 24 requests, 3 allocations, charged {sum(charges.values()):g} SUs (one job per request: "
        f"at least {24 * 0.25:g})"
    )


def test_a_pile_of_single_gpu_requests_runs_packed_on_the_sandbox_slurm_as_stampede3(sandbox: Sandbox) -> None:
    TaccCredentials(
        username=sandbox.user,
        host=sandbox.host,
        port=sandbox.port,
        private_key=SecretStr(sandbox.key.read_text()),
        known_hosts=sandbox.known_hosts.read_text().strip(),
        allocation=sandbox.account,
        scratch_root=SCRATCH.format(user=sandbox.user),
    ).save("stampede3", overwrite=True)
    user = f"acc{uuid.uuid4().hex[:6]}"
    # one 2-hour request and seven 30-minute ones stack onto one 4-GPU h100 node: a pile of 8 on 4 GPUs
    requests = [request(user, "stampede3", "h100", "2h")] + [
        request(user, "stampede3", "h100", "30m") for _ in range(7)
    ]
    assert plan_batch(requests).packed.slurm_jobs == 1
    records = submit_batch(requests, parallel_limit=2)
    [name] = {record.allocation_name for record in records}
    assert {record.allocation_nodes for record in records} == {1}
    jobs = subprocess.run(
        ["sacct", "-n", "-X", "-P", "--allusers", f"--name={name}", "-o", "JobID"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert jobs == [records[0].scheduler_job_id], "one sbatch for the pile"
    assert_each_ran_on_its_own_gpus(records)
    steps = subprocess.run(
        ["sacct", "-n", "-P", "--allusers", f"--jobs={jobs[0]}", "-o", "JobName,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert sum(line.startswith("tacc-") and line.endswith("|COMPLETED") for line in steps) >= 8, steps
    assert_charges_split(records)
