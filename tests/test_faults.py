"""Fault injection: each tracking promise (exactly once, no orphan, no false FAILED, nothing left
active) against real processes: the sandbox's slurmctld, slurmdbd and sshd, the PostgreSQL
server, a Prefect server, and submitting processes killed with SIGKILL.

Every scenario ends with an audit against Slurm itself (squeue and sacct as root) that prints
its figures: duplicate Slurm jobs, untracked Slurm jobs, records stuck active, false FAILED.
Each must be zero. The figures are also appended to tests/artifacts/faults.txt.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.logging import disable_run_logger
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling
from pydantic import BaseModel
from sqlalchemy.exc import OperationalError

from blocks.clusters import close_connections
from blocks.credentials import TaccCredentials
from blocks.database import open_job_store
from flows.submit import submit_job
from tacc_jobs.exceptions import TransientError
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.store import JobStore
from tacc_jobs.tracking import LOGIN_NODE_REASON
from tasks.flow_run_sync import cancel_jobs_of_cancelled_runs
from tasks.tracking import SystemSweep, sweep_system
from tests.conftest import REPO, Sandbox, accounted, start_now, wait_until

pytestmark = [pytest.mark.usefixtures("prefect_server", "ls6_block"), pytest.mark.faults]

FAULTS = Path("/tmp/tacc-faults")
WRAPPER = Path("/usr/local/bin/sbatch")  # before /usr/bin in sshd's PATH: the remote programs run it
SLOW_SBATCH = """#!/bin/bash
# Installed by tests/test_faults.py for its run only: Slurm's sbatch, slowed before or after
# it submits when the test asks (so an answer can be lost with the job already in the queue).
sleep "$(cat /tmp/tacc-faults/sbatch-before 2>/dev/null || echo 0)"
/usr/bin/sbatch "$@"; status=$?
sleep "$(cat /tmp/tacc-faults/sbatch-after 2>/dev/null || echo 0)"
exit $status
"""
SANDBOX_SCRIPT = REPO / "scripts" / "slurm-sandbox.sh"
FIGURES = REPO / "tests" / "artifacts" / "faults.txt"


def request(user: str, seconds_per_chunk: float = 0.5, **fields: Any) -> dict[str, Any]:
    """An AlphaCal job on the sandbox (`ls6`): 8 chunks, `seconds_per_chunk` each."""
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 3,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "ls6",
        "params": {"rfi_strategy": "high", "step_seconds": seconds_per_chunk},
        **fields,
    }


@pytest.fixture
def slow_sbatch() -> Iterator[Callable[[float, float], None]]:
    """Slow the sandbox's sbatch down: `slow(before, after)` seconds around the real submission."""
    FAULTS.mkdir(mode=0o755, exist_ok=True)
    WRAPPER.write_text(SLOW_SBATCH)
    WRAPPER.chmod(0o755)

    def slow(before: float, after: float) -> None:
        (FAULTS / "sbatch-before").write_text(str(before))
        (FAULTS / "sbatch-after").write_text(str(after))

    try:
        yield slow
    finally:
        WRAPPER.unlink(missing_ok=True)
        slow(0, 0)


def slurm_jobs(names: list[str]) -> dict[str, set[str]]:
    """Name -> every Slurm job id of that name, from the controller and from accounting (as root)."""
    jobs: dict[str, set[str]] = {name: set() for name in names}
    listing = ",".join(names)
    queue = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={listing}", "--format=%i|%j"], capture_output=True, text=True
    )
    accounted = subprocess.run(
        [
            "sacct",
            "--allusers",
            "--noheader",
            "-X",
            "--parsable2",
            f"--name={listing}",
            "--starttime=now-1days",
            "--format=JobID,JobName",
        ],
        capture_output=True,
        text=True,
    )
    for line in (queue.stdout + accounted.stdout).splitlines():
        job_id, _, name = line.partition("|")
        if name in jobs:
            jobs[name].add(job_id)
    return jobs


def record_figures(scenario: str, figures: dict[str, object]) -> None:
    """Print a scenario's figures and keep them in tests/artifacts/faults.txt."""
    line = f"{scenario}: " + ", ".join(f"{key}={value}" for key, value in figures.items())
    print(line)
    FIGURES.parent.mkdir(exist_ok=True)
    with FIGURES.open("a") as handle:
        handle.write(line + "\n")


def audit(scenario: str, store: JobStore, records: list[JobRecord], **extra: object) -> dict[str, object]:
    """Compare the records with Slurm; print and keep the figures; every one must be zero."""
    current = [store.get(record.id) for record in records]
    jobs = slurm_jobs([scheduler_job_name(record.id) for record in current])
    figures: dict[str, object] = {
        "duplicate_slurm_jobs": sum(max(0, len(ids) - 1) for ids in jobs.values()),
        "untracked_slurm_jobs": sum(
            1
            for record in current
            for job_id in jobs[scheduler_job_name(record.id)]
            if job_id != record.scheduler_job_id
        ),
        "records_stuck_active": sum(1 for record in current if not record.status.is_terminal),
        "false_failed": sum(
            1
            for record in current
            if record.status is JobStatus.FAILED
            and record.scheduler_job_id
            and accounted(record.scheduler_job_id, scheduler_job_name(record.id)) == "COMPLETED"
        ),
    }
    record_figures(scenario, {**figures, **extra})
    assert all(value == 0 for value in figures.values()), f"{scenario}: {figures}"
    return figures


def sweep() -> SystemSweep | None:
    """One watch-jobs sweep of the sandbox (`ls6`); None when it failed transiently (retried later)."""
    with disable_run_logger():
        try:
            return sweep_system.fn("ls6")
        except TransientError:
            return None


def sweep_until_ended(store: JobStore, records: list[JobRecord], timeout: float = 240) -> list[JobRecord]:
    """Sweep every few seconds, as watch-jobs does every minute, until every record has ended."""

    def ended() -> list[JobRecord] | None:
        sweep()
        current = [store.get(record.id) for record in records]
        return current if all(record.status.is_terminal for record in current) else None

    return wait_until(ended, timeout=timeout, interval=2)  # type: ignore[return-value]


def daemon(name: str, action: str, signal_name: str = "TERM") -> None:
    """Stop (SIGTERM: a restart; SIGKILL: a crash) or start (the sandbox script) one of the sandbox's daemons."""
    if action == "stop":
        subprocess.run(["pkill", f"-{signal_name}", "-x", name], check=False)
        wait_until(lambda: subprocess.run(["pgrep", "-x", name], capture_output=True).returncode != 0, timeout=30)
    else:
        up = subprocess.run([str(SANDBOX_SCRIPT), "up"], capture_output=True, text=True, timeout=300)
        assert up.returncode == 0, up.stdout + up.stderr


def scontrol(*args: str) -> None:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True)
    assert done.returncode == 0, f"scontrol {' '.join(args)}: {done.stderr}"


def sandbox_node() -> str:
    """The sandbox's one node."""
    return subprocess.run(
        ["sinfo", "--noheader", "--format=%n"], capture_output=True, text=True, check=True
    ).stdout.split()[0]


def submitted(user: str, **request_fields: Any) -> JobRecord:
    """submit_job(wait=False) on the sandbox: the job is recorded with its scheduler id."""
    record = submit_job(request(user, **request_fields), wait=False)
    assert record.scheduler_job_id
    return record


def running(store: JobStore, record: JobRecord) -> JobRecord:
    return wait_until(
        lambda: sweep() and (now := store.get(record.id)).status is JobStatus.RUNNING and now, timeout=120, interval=1
    )  # type: ignore[return-value]


def child_submitter(user: str, wait: bool = False, seconds_per_chunk: float = 0.3) -> subprocess.Popen[str]:
    """A separate Python process running submit_job on the sandbox, as a worker would."""
    code = f"import json, sys; from flows.submit import submit_job; submit_job(json.loads(sys.argv[1]), wait={wait})"
    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(request(user, seconds_per_chunk))],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def in_squeue_with_record(store: JobStore, user: str) -> JobRecord:
    """The user's record once its job is visible in squeue (its answer still held back)."""

    def visible() -> JobRecord | None:
        items = store.history(user).items
        return (
            items[0]
            if items and slurm_jobs([scheduler_job_name(items[0].id)])[scheduler_job_name(items[0].id)]
            else None
        )

    return wait_until(visible, timeout=120, interval=0.5)  # type: ignore[return-value]


def test_submitter_killed_right_after_sbatch_is_adopted_by_one_sweep(
    slow_sbatch: Callable[[float, float], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    store, user = open_job_store(), f"kill{uuid.uuid4().hex[:6]}"
    slow_sbatch(0, 30)  # the job is queued, the answer held back 30 s
    child = child_submitter(user)
    record = in_squeue_with_record(store, user)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    slow_sbatch(0, 0)
    orphan = store.get(record.id)
    assert (orphan.status, orphan.scheduler_job_id) == (JobStatus.QUEUED, None), (
        "the kill came after the record was written"
    )
    monkeypatch.setenv("TACC_ORCH_UNSUBMITTED_GRACE_SECONDS", "0")
    result = sweep()
    assert result is not None and result.adopted == 1
    adopted = store.get(record.id)
    expected = slurm_jobs([scheduler_job_name(record.id)])[scheduler_job_name(record.id)]
    assert {adopted.scheduler_job_id} == expected and adopted.status in (
        JobStatus.QUEUING,
        JobStatus.RUNNING,
        JobStatus.COMPLETED,
    )
    final = sweep_until_ended(store, [record])[0]
    assert final.status is JobStatus.COMPLETED, final
    assert store.su_committed(user) == final.charged_su, "only the real charge counts against the budget"
    audit("submitter kill -9 after sbatch, one sweep", store, [record])


@pytest.mark.parametrize("held", ["before", "after"])
def test_ssh_dropped_while_sbatch_is_in_flight_then_the_retry_makes_one_job(
    held: str, sandbox: Sandbox, slow_sbatch: Callable[[float, float], None]
) -> None:
    slow_sbatch(*((4, 0) if held == "before" else (0, 4)))
    connection = sandbox.connect()
    connection.command_timeout = 2  # ssh is killed while the remote program sleeps around sbatch
    slurm = SlurmScheduler(connection, "ls6", f"/home/{sandbox.user}/scratch/faults-{uuid.uuid4().hex[:6]}")
    name = f"tacc-{uuid.uuid4()}"
    submission = JobSubmission(
        name=name,
        script="#!/bin/bash\nsleep 1\n",
        work_dir=f"{slurm.scratch_root}/{name}",
        stdout_path=f"{slurm.scratch_root}/{name}/out",
        stderr_path=f"{slurm.scratch_root}/{name}/err",
        sbatch_args=["-p", "gpu-a100", "-N", "1", "-t", "00:02:00"],
    )
    with pytest.raises(TransientError):
        slurm.submit(submission)
    connection.command_timeout = 120  # the retry waits on the name's lock for the first program
    job_id = slurm.submit(submission)
    slow_sbatch(0, 0)
    jobs = wait_until(lambda: (found := slurm_jobs([name])[name]) and found, timeout=30)
    connection.close()
    assert jobs == {job_id}
    print(f"ssh dropped {held} sbatch ran, then the retry: slurm_jobs={len(jobs)}")


def test_two_concurrent_submitters_of_one_job_make_one_job(
    sandbox: Sandbox, slow_sbatch: Callable[[float, float], None]
) -> None:
    slow_sbatch(0, 3)
    scratch = f"/home/{sandbox.user}/scratch/faults-{uuid.uuid4().hex[:6]}"
    name = f"tacc-{uuid.uuid4()}"
    submission = JobSubmission(
        name=name,
        script="#!/bin/bash\nsleep 1\n",
        work_dir=f"{scratch}/{name}",
        stdout_path=f"{scratch}/{name}/out",
        stderr_path=f"{scratch}/{name}/err",
        sbatch_args=["-p", "gpu-a100", "-N", "1", "-t", "00:02:00"],
    )
    answers: list[str] = []
    connections = [sandbox.connect(), sandbox.connect()]
    threads = [
        threading.Thread(target=lambda c=c: answers.append(SlurmScheduler(c, "ls6", scratch).submit(submission)))
        for c in connections
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for connection in connections:
        connection.close()
    assert len(answers) == 2 and len(set(answers)) == 1
    assert slurm_jobs([name])[name] == set(answers)
    print(f"two concurrent submitters: answers={answers}, slurm_jobs={len(slurm_jobs([name])[name])}")


def test_slurmctld_restarted_while_jobs_wait_and_run() -> None:
    store, user = open_job_store(), f"ctld{uuid.uuid4().hex[:6]}"
    run_job = running(store, submitted(user, seconds_per_chunk=2))
    node = sandbox_node()
    scontrol(
        "update", f"nodename={node}", "state=drain", "reason=tacc-orchestrator fault test"
    )  # the next job must wait
    try:
        wait_job = submitted(user, seconds_per_chunk=0.3)
        scontrol("hold", wait_job.scheduler_job_id)
    finally:
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    daemon("slurmctld", "stop")
    failed_sweeps = sum(sweep() is None for _ in range(2))  # the controller is down: nothing changes
    assert failed_sweeps == 2, "with slurmctld down every sweep fails: none may read an empty queue as jobs gone"
    assert all(not store.get(r.id).status.is_terminal for r in (run_job, wait_job))
    daemon("slurmctld", "start")
    scontrol("release", wait_job.scheduler_job_id)
    sweep_until_ended(store, [run_job, wait_job])
    audit(
        "slurmctld restarted while jobs wait and run",
        store,
        [run_job, wait_job],
        sweeps_failed_while_down=failed_sweeps,
    )


def test_slurmdbd_down_while_jobs_end_then_back_two_minutes_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # a job unseen this long is FAILED as lost: 30 s, well inside the two minutes, so that a sweep
    # which took accounting's silence for the jobs' absence would fail them here
    monkeypatch.setenv("TACC_ORCH_UNSEEN_GRACE_SECONDS", "30")
    store, user = open_job_store(), f"dbd{uuid.uuid4().hex[:6]}"
    records = [submitted(user, seconds_per_chunk=2) for _ in range(2)]  # 16 s: seen RUNNING however slow the sweeps
    for record in records:
        running(store, record)
    daemon("slurmdbd", "stop", "KILL")
    try:
        down_since = time.monotonic()
        while time.monotonic() - down_since < 120:  # the jobs end meanwhile; squeue forgets them after MinJobAge
            sweep()
            assert not any(store.get(r.id).status is JobStatus.FAILED for r in records), (
                "a false FAILED while slurmdbd is down"
            )
            time.sleep(10)
    finally:
        daemon("slurmdbd", "start")
    sweep_until_ended(store, records)
    audit("slurmdbd stopped while jobs end, started 2 min later", store, records)


def test_scontrol_requeue_of_a_running_job_is_attempt_two_then_completed() -> None:
    store, user = open_job_store(), f"rq{uuid.uuid4().hex[:6]}"
    record = submitted(user, seconds_per_chunk=1.5)
    wait_until(lambda: sweep() and store.get(record.id).progress > 0, timeout=120, interval=1)  # the agent runs
    scontrol("requeue", record.scheduler_job_id)
    requeued = wait_until(
        lambda: sweep() and (now := store.get(record.id)).attempt == 2 and now, timeout=60, interval=1
    )
    assert requeued.status in (JobStatus.QUEUING, JobStatus.RUNNING), requeued
    start_now(record.scheduler_job_id)
    final = sweep_until_ended(store, [record])[0]
    assert (final.status, final.attempt) == (JobStatus.COMPLETED, 2), final
    audit("scontrol requeue of a running job", store, [record], attempts=final.attempt)


def test_a_node_set_down_under_a_running_job_is_followed_to_its_end() -> None:
    store, user = open_job_store(), f"down{uuid.uuid4().hex[:6]}"
    record = submitted(user, seconds_per_chunk=1.5)
    running(store, record)
    node = sandbox_node()
    scontrol("update", f"nodename={node}", "state=down", "reason=tacc-orchestrator fault test")
    try:
        wait_until(lambda: sweep() and store.get(record.id).status is JobStatus.QUEUING, timeout=60, interval=1)
        assert store.get(record.id).status is not JobStatus.FAILED
    finally:  # slurmd re-registers the node by itself (ReturnToService=2); resume it if it has not
        subprocess.run(["scontrol", "update", f"nodename={node}", "state=resume"], capture_output=True)
    start_now(record.scheduler_job_id)
    final = sweep_until_ended(store, [record])[0]
    assert final.status is JobStatus.COMPLETED and final.attempt == 2, final
    audit("a node set DOWN under a running job", store, [record], attempts=final.attempt)


def test_slurm_job_ids_restarted_after_the_controller_state_is_cleared() -> None:
    store, user = open_job_store(), f"ids{uuid.uuid4().hex[:6]}"
    old = sweep_until_ended(store, [submitted(user, seconds_per_chunk=0.1)])[0]
    old_rows = slurm_jobs([scheduler_job_name(old.id)])
    config = subprocess.run(
        ["scontrol", "show", "config"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    state_dir = Path(next(line.split("=", 1)[1].strip() for line in config if line.startswith("StateSaveLocation")))
    daemon("slurmctld", "stop")
    for entry in state_dir.iterdir():  # the controller forgets every job: ids start again at 1
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    daemon("slurmctld", "start")
    new = submitted(user, seconds_per_chunk=0.1)
    assert int(new.scheduler_job_id) < int(old.scheduler_job_id), "the ids restarted"
    final = sweep_until_ended(store, [new])[0]
    assert final.status is JobStatus.COMPLETED
    again = store.get(old.id)
    assert (again.status, again.scheduler_job_id, again.charged_su) == (
        old.status,
        old.scheduler_job_id,
        old.charged_su,
    )
    # Slurm's accounting may keep the old job or lose its row to the reused id (slurmdbd 22.05, seen
    # once in CI); what it must never do is give the old name a new job
    assert slurm_jobs([scheduler_job_name(old.id)])[scheduler_job_name(old.id)] <= old_rows[scheduler_job_name(old.id)]
    audit(
        "Slurm job ids restarted (controller state cleared)",
        store,
        [old, new],
        new_id=new.scheduler_job_id,
        old_id=old.scheduler_job_id,
    )


@pytest.mark.usefixtures("postgres_block")
def test_postgresql_job_store_stopped_under_a_sweep_then_started(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL stops after the sweep has read the jobs and polled Slurm, just before its first write."""
    store, user = open_job_store(), f"pg{uuid.uuid4().hex[:6]}"
    records = [submitted(user, seconds_per_chunk=0.5) for _ in range(3)]
    wait_until(
        lambda: {accounted(r.scheduler_job_id, scheduler_job_name(r.id)) for r in records} == {"COMPLETED"}, timeout=120
    )
    cluster = next(Path("/etc/postgresql").iterdir()).name
    postgres = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main"]
    write = JobStore.transition
    stopped: list[str] = []

    def stop_then_write(self: JobStore, *args: Any, **kwargs: Any) -> Any:
        if not stopped:
            subprocess.run([*postgres, "stop", "-m", "fast"], check=True, capture_output=True, timeout=120)
            stopped.append("between the sweep's reads and its writes")
        return write(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "transition", stop_then_write)
    try:
        with disable_run_logger(), pytest.raises(OperationalError):  # the database is gone: this sweep fails
            sweep_system.fn("ls6")
    finally:
        monkeypatch.setattr(JobStore, "transition", write)  # (undo() would also drop the fixtures' settings)
        subprocess.run([*postgres, "start"], check=True, capture_output=True, timeout=120)
    assert stopped, "the sweep reached its writes"
    wait_until(
        lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1"], capture_output=True).returncode == 0, timeout=60
    )
    assert all(not store.get(r.id).status.is_terminal for r in records), "the failed sweep wrote nothing"
    sweep_until_ended(store, records)
    audit(
        "PostgreSQL job store stopped between a sweep's reads and its writes, then started",
        store,
        records,
        failed_sweeps=1,
    )


def test_cancelling_a_run_before_its_job_id_is_recorded_leaves_no_job(
    slow_sbatch: Callable[[float, float], None],
) -> None:
    store, user = open_job_store(), f"cx{uuid.uuid4().hex[:6]}"
    slow_sbatch(0, 30)
    child = child_submitter(user, wait=True, seconds_per_chunk=5)
    record = in_squeue_with_record(store, user)
    assert store.get(record.id).scheduler_job_id is None
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(record.flow_run_id, Cancelling(), force=True)
    with disable_run_logger():
        cancelled = cancel_jobs_of_cancelled_runs.fn()
    assert cancelled == [record.id]
    child.wait(timeout=90)  # its answer arrives for a cancelled record: it cancels its job again and stops
    slow_sbatch(0, 0)
    name = scheduler_job_name(record.id)

    def in_queue() -> str:
        squeue = ["squeue", "--noheader", f"--name={name}", "--states=PENDING,RUNNING"]
        return subprocess.run(squeue, capture_output=True, text=True).stdout.strip()

    wait_until(lambda: not in_queue(), timeout=30)
    final = store.get(record.id)
    assert final.status is JobStatus.CANCELLED and final.scheduler_job_id in slurm_jobs([name])[name]
    audit(
        "flow run cancelled before its job id was recorded",
        store,
        [record],
        left_in_squeue=len(in_queue().splitlines()),
    )


class MfaLoginNode(BaseModel):
    """A second sshd for the sandbox's user that, after the key, asks for a one-time code, as
    TACC's login nodes ask for the MFA token (PAM's password prompt stands in for it): ssh in
    batch mode is refused "Permission denied (keyboard-interactive)". Down until `start()`."""

    port: int
    code: str
    config: Path

    def start(self) -> None:
        log = self.config.with_name("sshd.log")
        subprocess.run(["/usr/sbin/sshd", "-f", str(self.config), "-E", str(log)], check=True)


@pytest.fixture
def mfa_login_node(sandbox: Sandbox, tmp_path: Path) -> Iterator[MfaLoginNode]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, pid_file = secrets.token_hex(8), tmp_path / "sshd.pid"
    shadow = subprocess.run(
        ["getent", "shadow", sandbox.user], capture_output=True, text=True, check=True
    ).stdout.split(":")[1]
    config = tmp_path / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {sandbox.key.parent / 'host_ed25519'}\n"
        f"PidFile {pid_file}\nUsePAM yes\nPasswordAuthentication no\nKbdInteractiveAuthentication yes\n"
        "AuthenticationMethods publickey,keyboard-interactive\nAuthorizedKeysFile .ssh/authorized_keys\n"
        f"PermitRootLogin no\nAllowUsers {sandbox.user}\nMaxSessions 64\n"
    )
    subprocess.run(["chpasswd"], input=f"{sandbox.user}:{code}", text=True, check=True)
    try:
        yield MfaLoginNode(port=port, code=code, config=config)
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        subprocess.run(["usermod", "-p", shadow, sandbox.user], check=True)  # the sandbox user as it was


def login_node_events(since: datetime) -> list[dict[str, Any]]:
    """The `tacc.login-node.*` events the Prefect server received since `since`."""

    async def read() -> list[dict[str, Any]]:
        async with get_client() as client:
            response = await client._client.post(
                "/events/filter",
                json={"filter": {"event": {"prefix": ["tacc.login-node."]}, "occurred": {"since": since.isoformat()}}},
            )
            response.raise_for_status()
            return response.json()["events"]

    return asyncio.run(read())


def test_a_login_node_down_then_asking_for_mfa_fails_nothing_and_one_login_resumes_every_job(
    ls6_block: TaccCredentials, mfa_login_node: MfaLoginNode, sandbox: Sandbox, tmp_path: Path
) -> None:
    store, user = open_job_store(), f"mfa{uuid.uuid4().hex[:6]}"
    since = datetime.now().astimezone()
    records = [running(store, submitted(user, seconds_per_chunk=1.5)) for _ in range(2)]  # 12 s each
    sockets = Path(tempfile.mkdtemp(prefix="cm-", dir="/tmp"))  # a socket's path must fit in 108 bytes
    login_node, control_path = mfa_login_node, str(sockets / "%C")
    # the master connection is gone and the login node is down (a reboot at TACC), then back asking for MFA
    close_connections()
    ls6_block.model_copy(
        update={
            "port": login_node.port,
            "known_hosts": ls6_block.known_hosts.replace(f":{sandbox.port} ", f":{login_node.port} "),
            "control_path": control_path,
        }
    ).save("ls6", overwrite=True)

    def waited_out(cause: str) -> list[SystemSweep | None]:
        waited = [sweep() for _ in range(2)]
        assert all(w is not None and w.unobserved and cause in w.unobserved for w in waited), (
            f"a login node that is away ({cause}) fails no sweep: it is waited out ({waited})"
        )
        for record in records:
            now = store.get(record.id)
            assert not now.status.is_terminal and (now.reason or "").startswith(LOGIN_NODE_REASON), now
        return waited

    try:
        waited = waited_out("Connection refused")
        login_node.start()
        waited += waited_out("deployments.login ls6")
        time.sleep(15)  # the jobs end meanwhile, unobserved
        # the operator logs in once, answering the prompt (SSH_ASKPASS types the code)
        askpass = tmp_path / "askpass"
        askpass.write_text(f"#!/bin/sh\necho {login_node.code}\n")
        askpass.chmod(0o700)
        login = subprocess.run(
            [sys.executable, "-m", "deployments.login", "ls6", "--persist", "10m"],
            cwd=REPO,
            env={
                **os.environ,
                "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "SSH_ASKPASS": str(askpass),
                "SSH_ASKPASS_REQUIRE": "force",
            },
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert login.returncode == 0, login.stdout + login.stderr
        ended = sweep_until_ended(store, records)
        assert all(r.status is JobStatus.COMPLETED and r.charged_su and r.reason is None for r in ended), ended
        events = wait_until(
            lambda: (
                (found := login_node_events(since))
                and sum(e["event"] == "tacc.login-node.available" for e in found) == 1
                and found
            ),
            30,
            1,
        )
        unavailable = [
            e["payload"]["reason"]
            for e in sorted(events, key=lambda e: e["occurred"])
            if e["event"] == "tacc.login-node.unavailable"
        ]
        assert len(unavailable) == 2 and "Connection refused" in unavailable[0] and "MFA" in unavailable[1], (
            "one event per cause, not per sweep"
        )
        audit("login node down, then asking for MFA, one login later", store, records, sweeps_waited=len(waited))
    finally:
        close_connections()
        subprocess.run(
            [
                "ssh",
                "-p",
                str(login_node.port),
                "-o",
                f"ControlPath={control_path}",
                "-O",
                "exit",
                f"{sandbox.user}@127.0.0.1",
            ],
            capture_output=True,
        )
        shutil.rmtree(sockets, ignore_errors=True)
