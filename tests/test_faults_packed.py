"""Fault injection for packed allocations (one Slurm job, many records) on the sandbox Slurm: a
requeue of a running allocation, its submitter killed between sbatch and recording the answer,
ssh dropped while its sbatch is in flight, its members cancelled one by one, its wall time
reached. Each scenario injects the fault its promise claims to survive.

Every scenario ends with an audit against Slurm itself (squeue and sacct as root) that prints its
figures: Slurm jobs of the allocation's name beyond one, Slurm jobs of that name no record holds,
records stuck active, false FAILED (a member recorded FAILED whose own status file says
COMPLETED), steps still running once the allocation has ended. Each must be zero. The figures
are also appended to tests/artifacts/faults.txt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.logging import disable_run_logger
from prefect.settings import PREFECT_API_URL

from blocks.clusters import agent_runtime, scheduler_for
from blocks.database import open_job_store
from flows.batch import submit_batch
from flows.cancel import cancel_job
from tacc_jobs.exceptions import TransientError
from tacc_jobs.launcher import MemberStatus
from tacc_jobs.models import JobRecord, JobRequest, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.schedulers.job_script import allocation_dir
from tacc_jobs.schedulers.packed_script import PackedMember, render_allocation
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.store import JobStore, JobUpdate
from tacc_jobs.tracking import PILE_REASON
from tasks.planning import plan_job_request, plan_request_batch
from tests.conftest import REPO, Sandbox, start_now, wait_until
from tests.test_faults import (
    FAULTS,
    record_figures,
    scontrol,
    slow_sbatch,  # noqa: F401 (the single-job suite's fixture, used here by name)
    slurm_jobs,
    sweep,
)

pytestmark = [pytest.mark.usefixtures("prefect_server", "ls6_block"), pytest.mark.faults]

QUEUE = "gpu-a100"  # 3 GPUs a node on the sandbox
SCONTROL_WRAPPER = Path("/usr/local/bin/scontrol")  # before /usr/bin in sshd's PATH, so in the batch jobs' PATH too
SLOW_JOB = FAULTS / "scontrol-slow-job"
LAUNCHER_HELD_SECONDS = 8
SLOW_SCONTROL = f"""#!/bin/bash
# Installed by tests/test_faults_packed.py for its run only: Slurm's scontrol, slowed inside the one
# Slurm job the test names (a restarted packed allocation's launcher asks it for its nodes first).
if [ -n "${{SLURM_JOB_ID:-}}" ] && [ "$SLURM_JOB_ID" = "$(cat {SLOW_JOB} 2>/dev/null)" ]; then sleep {LAUNCHER_HELD_SECONDS}; fi
exec /usr/bin/scontrol "$@"
"""


@pytest.fixture
def slow_launcher_start() -> Iterator[Callable[[str], None]]:
    """`hold(job_id)`: that allocation's launcher starts its members `LAUNCHER_HELD_SECONDS` late
    (the members' status files of its previous attempt are all there is meanwhile)."""
    FAULTS.mkdir(mode=0o755, exist_ok=True)
    SCONTROL_WRAPPER.write_text(SLOW_SCONTROL)
    SCONTROL_WRAPPER.chmod(0o755)
    try:
        yield lambda job_id: SLOW_JOB.write_text(job_id)
    finally:
        SCONTROL_WRAPPER.unlink(missing_ok=True)
        SLOW_JOB.unlink(missing_ok=True)


def request(user: str, seconds_per_chunk: float, max_runtime: str = "00:10:00") -> dict[str, Any]:
    """A one-GPU AlphaCal job on the sandbox (`ls6`): 8 chunks, `seconds_per_chunk` each."""
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 1,
        "max_runtime": max_runtime,
        "user_id": user,
        "system": "ls6",
        "queue": QUEUE,
        "params": {"rfi_strategy": "medium", "step_seconds": seconds_per_chunk},
    }


def packed(requests: list[dict[str, Any]]) -> list[JobRecord]:
    """submit_batch(wait=False): the requests packed into one allocation, recorded with its id."""
    records = submit_batch(requests, parallel_limit=1, wait=False)
    assert len({record.allocation_name for record in records}) == 1 and records[0].allocation_name
    assert len({record.scheduler_job_id for record in records}) == 1 and records[0].scheduler_job_id
    return records


def current(store: JobStore, records: list[JobRecord]) -> list[JobRecord]:
    return [store.get(record.id) for record in records]


def watched_sweep(store: JobStore, records: list[JobRecord], seen: dict[str, set[JobStatus]]) -> list[JobRecord]:
    """One sweep, then every record's status noted (by id) so a test can say what was never recorded."""
    sweep()
    now = current(store, records)
    for record in now:
        seen.setdefault(str(record.id), set()).add(record.status)
    return now


def sweep_until(
    store: JobStore,
    records: list[JobRecord],
    seen: dict[str, set[JobStatus]],
    done: Callable[[list[JobRecord]], bool],
    timeout: float = 240,
    interval: float = 2,
) -> list[JobRecord]:
    """Sweep every `interval` s (watch-jobs does every minute), noting every status, until `done`."""
    return wait_until(
        lambda: (now := watched_sweep(store, records, seen)) and done(now) and now,  # type: ignore[return-value]
        timeout=timeout,
        interval=interval,
    )


def ended(records: list[JobRecord]) -> bool:
    return all(record.status.is_terminal for record in records)


def charged(records: list[JobRecord]) -> bool:
    return all(record.status.is_terminal and record.charged_su is not None for record in records)


def member_files(records: list[JobRecord], name: str) -> dict[str, str]:
    """One file of each member's work dir (e.g. `output/status.json`, `stdout.log`), read over SSH."""
    paths = {str(record.id): f"{record.work_dir}/{name}" for record in records}
    files = scheduler_for("ls6").read_files({path: 0 for path in paths.values()})
    return {record_id: files[path].data for record_id, path in paths.items()}


def member_statuses(records: list[JobRecord]) -> dict[str, MemberStatus]:
    return {
        record_id: MemberStatus.model_validate_json(text)
        for record_id, text in member_files(records, "output/status.json").items()
    }


def agent_runs(records: list[JobRecord]) -> dict[str, int]:
    """How many times each member's agent started (its first chunk line in its appended stdout.log)."""
    return {
        record_id: text.count("alphacal: chunk 1/") for record_id, text in member_files(records, "stdout.log").items()
    }


def steps(job_id: str) -> dict[str, str]:
    """Step name -> state of every step of a Slurm job (accounting, as root), the batch step included."""
    output = subprocess.run(
        ["sacct", "--allusers", "-n", "-P", "-j", job_id, "-o", "JobID,JobName,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        name: state.split()[0] for step, name, state in (line.split("|") for line in output.splitlines()) if "." in step
    }


def running_steps(job_id: str) -> int:
    """Steps of the job squeue still lists, plus steps accounting says are running."""
    queued = subprocess.run(
        ["squeue", "--noheader", "-s", "-j", job_id, "-o", "%i"], capture_output=True, text=True
    ).stdout.split()
    return len(queued) + sum(state == "RUNNING" for state in steps(job_id).values())


def allocation_charge(records: list[JobRecord]) -> float:
    """TACC's charge of the allocation (its whole nodes for the time its last attempt ran)."""
    job_id, name = records[0].scheduler_job_id, records[0].allocation_name
    assert job_id and name
    state = scheduler_for("ls6").states({job_id: name})[job_id]
    assert state.start and state.end
    spec = find_queue("ls6", QUEUE)
    assert spec
    return charge_su(spec, records[0].allocation_nodes or 1, state.end - state.start)


def audit(scenario: str, store: JobStore, records: list[JobRecord], **extra: object) -> dict[str, object]:
    """Compare an allocation's records with Slurm; print and keep the figures; every one must be zero."""
    now = current(store, records)
    name, job_id = now[0].allocation_name, now[0].scheduler_job_id
    assert name
    jobs = slurm_jobs([name])[name]
    statuses = member_files(now, "output/status.json")
    figures: dict[str, object] = {
        "duplicate_slurm_jobs": max(0, len(jobs) - 1),
        "untracked_slurm_jobs": sum(1 for found in jobs if found not in {record.scheduler_job_id for record in now}),
        "records_stuck_active": sum(1 for record in now if not record.status.is_terminal),
        "false_failed": sum(
            1 for record in now if record.status is JobStatus.FAILED and '"COMPLETED"' in statuses[str(record.id)]
        ),
        "orphan_steps": running_steps(job_id) if job_id else 0,
    }
    record_figures(scenario, {**figures, **extra})
    assert all(value == 0 for value in figures.values()), f"{scenario}: {figures}"
    return figures


def test_scontrol_requeue_of_a_running_allocation_runs_only_its_unfinished_members_again(
    slow_launcher_start: Callable[[str], None],
) -> None:
    store, user = open_job_store(), f"prq{uuid.uuid4().hex[:6]}"
    records = packed([request(user, 0.2), request(user, 4), request(user, 4)])  # 3 GPUs: all start at once
    short, long = records[0], records[1:]
    seen: dict[str, set[JobStatus]] = {}
    sweep_until(
        store,
        records,
        seen,
        lambda now: (
            now[0].status is JobStatus.COMPLETED
            and all(record.status is JobStatus.RUNNING and record.progress > 0 for record in now[1:])
        ),
        timeout=120,
    )
    job_id = short.scheduler_job_id
    assert job_id
    scontrol("requeue", job_id)
    requeued = sweep_until(store, records, seen, lambda now: all(record.attempt == 2 for record in now[1:]), timeout=60)
    assert all(record.status in (JobStatus.QUEUING, JobStatus.RUNNING) for record in requeued[1:]), requeued
    slow_launcher_start(job_id)
    start_now(job_id)
    # sweeps while the restarted allocation runs but its launcher has not run the members again:
    # their status files are the first attempt's (RUNNING, their old start), which is no restart
    stale: list[int] = []
    sweep_until(
        store,
        records,
        seen,
        lambda now: (
            stale.append(sum(record.reason == PILE_REASON for record in now[1:]))
            or all(status.restart == 1 for status in member_statuses(now[1:]).values())
        ),
        timeout=60,
        interval=1,
    )
    restarted = scheduler_for("ls6").states({job_id: short.allocation_name or ""})[job_id]
    assert restarted.start
    held = min(status.start for status in member_statuses(long).values() if status.start) - restarted.start
    assert held >= timedelta(seconds=LAUNCHER_HELD_SECONDS - 1), (
        f"the fault was injected: the launcher started {held} late"
    )
    final = sweep_until(store, records, seen, charged)
    assert [(record.status, record.attempt) for record in final] == [(JobStatus.COMPLETED, 1)] + [
        (JobStatus.COMPLETED, 2)
    ] * 2, final
    assert not any(JobStatus.FAILED in statuses for statuses in seen.values()), f"a false FAILED at some sweep: {seen}"
    runs = agent_runs(final)
    assert runs == {str(short.id): 1, **{str(record.id): 2 for record in long}}, (
        "the ended member ran once, the others again"
    )
    restarts = {record_id: status.restart for record_id, status in member_statuses(final).items()}
    assert restarts == {str(short.id): 0, **{str(record.id): 1 for record in long}}
    total = allocation_charge(final)
    assert round(sum(record.charged_su or 0.0 for record in final), 4) == total and all(
        record.charged_su for record in final
    )
    audit(
        "packed: scontrol requeue of a running allocation",
        store,
        records,
        slurm_attempts=2,
        agent_runs=sorted(runs.values()),
        sweeps_in_stale_window=sum(1 for count in stale if count),
        launcher_held_seconds=round(held.total_seconds(), 1),
        charged_su=total,
    )


def child_batch_submitter(requests: list[dict[str, Any]]) -> subprocess.Popen[str]:
    """A separate Python process running submit_batch on the sandbox, as a worker would."""
    code = "import json, sys; from flows.batch import submit_batch; submit_batch(json.loads(sys.argv[1]), wait=False)"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(requests)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_batch_submitter_killed_right_after_sbatch_is_adopted_member_by_member_by_one_sweep(
    slow_sbatch: Callable[[float, float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, user = open_job_store(), f"pkill{uuid.uuid4().hex[:6]}"
    slow_sbatch(0, 30)  # the allocation is queued, the answer held back 30 s
    child = child_batch_submitter([request(user, 0.3) for _ in range(3)])

    def in_squeue() -> list[JobRecord] | None:
        items = store.history(user).items
        name = items[0].allocation_name if len(items) == 3 else None
        return items if name and slurm_jobs([name])[name] else None

    records = wait_until(in_squeue, timeout=120, interval=0.5)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    slow_sbatch(0, 0)
    name = records[0].allocation_name
    assert name
    assert all(
        (store.get(record.id).status, store.get(record.id).scheduler_job_id) == (JobStatus.QUEUED, None)
        for record in records
    )
    monkeypatch.setenv("TACC_ORCH_UNSUBMITTED_GRACE_SECONDS", "0")
    first = sweep()
    assert first is not None and first.adopted == 3, first
    again = sweep()
    assert again is not None and again.adopted == 0, "adopted once"
    expected = slurm_jobs([name])[name]
    assert len(expected) == 1 and {record.scheduler_job_id for record in current(store, records)} == expected
    seen: dict[str, set[JobStatus]] = {}
    final = sweep_until(store, records, seen, charged)
    assert [record.status for record in final] == [JobStatus.COMPLETED] * 3, final
    assert slurm_jobs([name])[name] == expected, "no second allocation"
    assert store.su_committed(user) == pytest.approx(sum(record.charged_su or 0.0 for record in final))
    audit(
        "packed: batch submitter kill -9 after sbatch, one sweep",
        store,
        records,
        adopted=first.adopted,
        slurm_jobs=len(expected),
    )


@pytest.mark.parametrize("held", ["before", "after"])
def test_ssh_dropped_while_an_allocations_sbatch_is_in_flight_then_the_retry_makes_one_job_and_writes_its_files_once(
    held: str, sandbox: Sandbox, slow_sbatch: Callable[[float, float], None]
) -> None:
    store, user = open_job_store(), f"pssh{uuid.uuid4().hex[:6]}"
    requests = [JobRequest.model_validate(request(user, 0.1)) for _ in range(3)]
    with disable_run_logger():
        allocation = plan_request_batch.fn(requests).allocations[0]
        records = [store.create(item, plan_job_request.fn(item, check_budget=False)) for item in requests]
    connection = sandbox.connect()
    slurm = SlurmScheduler(connection, "ls6", f"/home/{sandbox.user}/scratch/pfaults-{uuid.uuid4().hex[:6]}")
    name = f"tacc-{uuid.uuid4()}"
    submission = render_allocation(
        name,
        [PackedMember(record=record, request=item) for record, item in zip(records, requests)],
        [*allocation.sbatch_args, "--hold"],
        3,
        slurm.scratch_root,
        agent_runtime("ls6"),
        "srun",
    )
    assert len(submission.files) == 4, "a manifest and three member scripts"
    slow_sbatch(*((4, 0) if held == "before" else (0, 4)))
    connection.command_timeout = 2  # ssh is killed while the remote program sleeps around sbatch
    try:
        with pytest.raises(TransientError):
            slurm.submit(submission)
        connection.command_timeout = 120  # the retry waits on the name's lock for the first program
        job_id = slurm.submit(submission)
        slow_sbatch(0, 0)
        jobs = wait_until(lambda: (found := slurm_jobs([name])[name]) and found, timeout=30)
        assert jobs == {job_id}
        files = {f"{allocation_dir(slurm.scratch_root, name)}/job.sbatch": submission.script, **submission.files}
        stored = slurm.read_files({path: 0 for path in files})
        assert {path: stored[path].data for path in files} == files, "every file written whole"
        submitted_at = subprocess.run(
            ["squeue", "--noheader", "-j", job_id, "-o", "%V"], capture_output=True, text=True, check=True
        ).stdout.strip()
        written = connection.run(["stat", "-c", "%Y", *files]).stdout.split()
        submit_epoch = int(
            subprocess.run(
                ["date", "-u", "-d", submitted_at + "Z", "+%s"], capture_output=True, text=True, check=True
            ).stdout
        )
        rewritten = sum(int(moment) > submit_epoch for moment in written)
        assert rewritten == 0, "the retry found the job and wrote nothing again"
    finally:
        slow_sbatch(0, 0)
        subprocess.run(["scancel", f"--name={name}"], capture_output=True)
        connection.close()
        for record in records:  # never submitted through the store: not left for a sweep to settle
            store.transition(record.id, JobStatus.CANCELLED, JobUpdate(reason="fault test over"))
    record_figures(
        f"packed: ssh dropped {held} sbatch ran, then the retry",
        {"slurm_jobs": len(jobs), "files": len(files), "files_rewritten": rewritten},
    )


def test_cancelling_members_stops_their_steps_and_the_last_cancel_ends_the_allocation_with_no_orphan_step() -> None:
    store, user = open_job_store(), f"pcx{uuid.uuid4().hex[:6]}"
    records = packed([request(user, 5) for _ in range(3)])
    job_id = records[0].scheduler_job_id
    assert job_id
    seen: dict[str, set[JobStatus]] = {}
    sweep_until(
        store, records, seen, lambda now: all(record.status is JobStatus.RUNNING for record in now), timeout=120
    )
    step_names = [f"tacc-{record.id.hex}" for record in records]
    assert cancel_job(records[0].id).status is JobStatus.CANCELLED
    wait_until(lambda: member_statuses(records[:1])[str(records[0].id)].state == "CANCELLED", timeout=20, interval=0.5)
    after_one = wait_until(
        lambda: (now := steps(job_id)) and now.get(step_names[0]) not in (None, "RUNNING") and now, timeout=30
    )
    assert [after_one.get(step) for step in step_names[1:]] == ["RUNNING", "RUNNING"], after_one
    assert (
        subprocess.run(
            ["squeue", "--noheader", "-j", job_id, "-o", "%T"], capture_output=True, text=True
        ).stdout.strip()
        == "RUNNING"
    )
    for record in records[1:]:  # the whole batch: every member; the last one cancels the allocation
        assert cancel_job(record.id).status is JobStatus.CANCELLED
    wait_until(
        lambda: (
            not subprocess.run(["squeue", "--noheader", "-j", job_id], capture_output=True, text=True).stdout.strip()
        ),
        timeout=60,
    )
    final = sweep_until(store, records, seen, charged)
    assert [record.status for record in final] == [JobStatus.CANCELLED] * 3
    assert all(statuses <= {JobStatus.QUEUING, JobStatus.RUNNING, JobStatus.CANCELLED} for statuses in seen.values()), (
        seen
    )
    wait_until(lambda: running_steps(job_id) == 0, timeout=60)
    left = [
        record.id
        for record in records
        if subprocess.run(["pgrep", "-f", str(record.id)], capture_output=True).returncode == 0
    ]
    assert not left, f"processes of cancelled members still run: {left}"
    assert round(sum(record.charged_su or 0.0 for record in final), 4) == allocation_charge(final)
    ended_steps = steps(job_id)
    audit(
        "packed: members cancelled one by one, the last ends the allocation",
        store,
        records,
        step_states={
            "batch": ended_steps.get("batch"),
            **{f"m{index}": ended_steps.get(step) for index, step in enumerate(step_names)},
        },
        member_processes_left=len(left),
    )


def test_the_wall_time_reached_records_running_members_timeout_never_completed_and_charges_them() -> None:
    store, user = open_job_store(), f"pto{uuid.uuid4().hex[:6]}"
    records = packed(
        [request(user, 0.2, "00:01:00")] + [request(user, 20, "00:01:00") for _ in range(2)]
    )  # 160 s agents
    name = records[0].allocation_name
    assert name
    script = scheduler_for("ls6").read_files(
        {f"{allocation_dir(scheduler_for('ls6').scratch_root, name)}/job.sbatch": 0}
    )
    assert "#SBATCH --signal=B:USR1@" in next(iter(script.values())).data
    seen: dict[str, set[JobStatus]] = {}
    final = sweep_until(store, records, seen, charged, timeout=240)
    statuses = member_statuses(final)
    assert final[0].status is JobStatus.COMPLETED and statuses[str(final[0].id)].state == "COMPLETED"
    for record in final[1:]:
        assert (record.status, record.reason, statuses[str(record.id)].state) == (
            JobStatus.FAILED,
            "TIMEOUT",
            "TIMEOUT",
        ), record
        assert JobStatus.COMPLETED not in seen[str(record.id)]
        assert record.charged_su and record.gpu_seconds and record.gpu_seconds >= 20
    ran = [status.end - status.start for status in statuses.values() if status.end and status.start]
    assert max(ran) < timedelta(minutes=1), "stopped before the wall time"
    assert round(sum(record.charged_su or 0.0 for record in final), 4) == allocation_charge(final)
    audit(
        "packed: wall time reached (-t 1 min, 160 s members)",
        store,
        records,
        member_seconds=[round(delta.total_seconds()) for delta in ran],
        charged_su=[record.charged_su for record in final],
    )
