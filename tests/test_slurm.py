"""The Slurm backend over SSH, against the real single-node Slurm and sshd of the sandbox."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tacc_jobs.exceptions import PermanentSchedulerError, TransientSchedulerError
from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers import SACCT_FIELDS, JobSubmission
from tacc_jobs.schedulers.slurm import END_OF_FILES, SlurmScheduler
from tacc_jobs.schedulers.states import map_slurm_state
from tacc_jobs.ssh import SshConnection
from tests.conftest import Sandbox, wait_until

HOSTILE = "$(touch {marker}); `touch {marker}`; touch {marker} #'\""


def job(
    slurm: SlurmScheduler, body: str, *args: str, name: str | None = None, time_limit: str = "00:02:00"
) -> JobSubmission:
    name = name or f"tacc-{uuid.uuid4().hex}"
    work_dir = f"{slurm.scratch_root}/{name}"
    return JobSubmission(
        name=name,
        script=f"#!/bin/bash\n{body}\n",
        work_dir=work_dir,
        stdout_path=f"{work_dir}/stdout.log",
        stderr_path=f"{work_dir}/stderr.log",
        sbatch_args=["-p", "gpu-a100", "-N", "1", "--ntasks-per-node", "1", "-t", time_limit, *args],
    )


NAMES: dict[str, str] = {}
"""Job id -> name of every job these tests submitted (a job's identity is both)."""


def submit(slurm: SlurmScheduler, submission: JobSubmission) -> str:
    """Submit, remembering the job's name."""
    job_id = slurm.submit(submission)
    NAMES[job_id] = submission.name
    return job_id


def state_of(slurm: SlurmScheduler, job_id: str):
    return slurm.states({job_id: NAMES[job_id]}).get(job_id)


def ended(slurm: SlurmScheduler, job_id: str, timeout: float = 60):
    def check():
        state = state_of(slurm, job_id)
        return state if state and map_slurm_state(state.state, state.exit_code)[0].is_terminal else None

    return wait_until(check, timeout=timeout, interval=0.5)


def names_in_queue(sandbox: Sandbox, name: str) -> list[str]:
    output = subprocess.run(
        ["squeue", "--noheader", "--states=all", f"--name={name}", "--format=%i"],
        capture_output=True,
        text=True,
        check=True,
    )
    accounted = subprocess.run(
        ["sacct", "--noheader", "-X", "--parsable2", "--allusers", f"--name={name}", "--format=JobID"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(set(output.stdout.split()) | set(accounted.stdout.split()))


def test_submit_over_ssh_and_poll_to_completed(slurm: SlurmScheduler) -> None:
    submission = job(slurm, 'echo "job $SLURM_JOB_ID in $SLURM_JOB_PARTITION"; sleep 1')
    job_id = submit(slurm, submission)
    state = ended(slurm, job_id)
    assert map_slurm_state(state.state, state.exit_code) == (JobStatus.COMPLETED, None)
    assert state.start is not None and state.end >= state.start and state.start.tzinfo is not None
    assert abs(state.end - datetime.now(timezone.utc)) < timedelta(minutes=2)
    log = slurm.read_files({submission.stdout_path: 0})[submission.stdout_path]
    assert log.data == f"job {job_id} in gpu-a100\n"


def test_failing_job_keeps_its_exit_code(slurm: SlurmScheduler) -> None:
    state = ended(slurm, submit(slurm, job(slurm, "exit 3")))
    assert (state.state, state.exit_code) == ("FAILED", "3:0")
    assert map_slurm_state(state.state, state.exit_code) == (JobStatus.FAILED, "exit code 3")


def test_job_over_its_wall_time_times_out(slurm: SlurmScheduler) -> None:
    state = ended(slurm, submit(slurm, job(slurm, "sleep 300", time_limit="00:01:00")), timeout=150)
    assert map_slurm_state(state.state, state.exit_code) == (JobStatus.FAILED, "TIMEOUT")


def test_cancel_while_pending_and_while_running(slurm: SlurmScheduler) -> None:
    held = submit(slurm, job(slurm, "echo never", "--hold"))
    running = submit(slurm, job(slurm, "sleep 120"))
    pending = wait_until(lambda: state_of(slurm, held))
    assert map_slurm_state(pending.state, reason=pending.reason) == (JobStatus.QUEUING, "JobHeldUser")
    wait_until(lambda: state_of(slurm, running).state == "RUNNING", timeout=30)
    slurm.cancel(held)
    slurm.cancel(running)
    for job_id in (held, running):
        state = ended(slurm, job_id)
        status, reason = map_slurm_state(state.state, state.exit_code)
        assert status is JobStatus.CANCELLED and reason.startswith("cancelled"), state
    slurm.cancel(running)  # an ended job: nothing to do, no error


class DropAfterSubmit:
    """A transport whose connection drops right after the submission ran on the cluster."""

    def __init__(self, inner: SshConnection) -> None:
        self.inner, self.dropped = inner, False
        self.commands_run = 0

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        self.commands_run += 1
        completed = self.inner.run(argv, stdin=stdin, timeout=timeout)
        if "sbatch" in " ".join(argv) and not self.dropped:
            self.dropped = True
            self.inner.close()  # the master connection really goes away; the answer is lost
            raise TransientSchedulerError("ssh: Connection reset by peer")
        return completed


def test_dropped_connection_after_sbatch_gives_exactly_one_job(sandbox: Sandbox) -> None:
    connection = sandbox.connect()
    transport = DropAfterSubmit(connection)
    slurm = SlurmScheduler(transport, "ls6", f"/home/{sandbox.user}/scratch/drop-{uuid.uuid4().hex[:6]}")
    submission = job(slurm, "sleep 2")
    with pytest.raises(TransientSchedulerError):
        submit(slurm, submission)
    transport.inner = sandbox.connect()  # the retry logs in again
    adopted = submit(slurm, submission)
    assert names_in_queue(sandbox, submission.name) == [adopted]
    assert submit(slurm, submission) == adopted
    ended(slurm, adopted)
    transport.inner.close()


class CutStdin:
    """A transport whose connection drops while the submission's files are still coming on stdin."""

    def __init__(self, inner: SshConnection) -> None:
        self.inner = inner

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        if stdin and END_OF_FILES in stdin:
            stdin = stdin.splitlines(keepends=True)[0]  # the script arrived, the rest never did
        return self.inner.run(argv, stdin=stdin, timeout=timeout)


def test_files_cut_short_on_stdin_are_never_submitted(sandbox: Sandbox) -> None:
    connection = sandbox.connect()
    slurm = SlurmScheduler(CutStdin(connection), "ls6", f"/home/{sandbox.user}/scratch/cut-{uuid.uuid4().hex[:6]}")
    submission = job(slurm, "sleep 1").model_copy(
        update={"files": {f"{slurm.scratch_root}/member.sh": "#!/bin/bash\ntrue\n"}}
    )
    with pytest.raises(TransientSchedulerError, match="cut short"):
        submit(slurm, submission)
    assert names_in_queue(sandbox, submission.name) == []
    assert not Path(submission.work_dir, "job.sbatch").exists() and not Path(slurm.scratch_root, "member.sh").exists()
    retried = submit(SlurmScheduler(connection, "ls6", slurm.scratch_root), submission)
    assert names_in_queue(sandbox, submission.name) == [retried] and Path(slurm.scratch_root, "member.sh").exists()
    ended(slurm, retried)
    connection.close()


def test_one_scheduler_command_per_poll_cycle(slurm: SlurmScheduler, sandbox_connection: SshConnection) -> None:
    counts = {}
    for active in (1, 20, 200):
        ids = [submit(slurm, job(slurm, "sleep 30", "--hold")) for _ in range(active)]
        before = sandbox_connection.commands_run
        states = slurm.states({job_id: NAMES[job_id] for job_id in ids})
        counts[active] = sandbox_connection.commands_run - before
        assert len(states) == active and all(s.state == "PENDING" for s in states.values())
        for job_id in ids:
            slurm.cancel(job_id)
    assert counts == {1: 1, 20: 1, 200: 1}

    # jobs that have left the queue: one squeue, then one sacct for all of them, in the same command
    def accounted() -> bool:
        in_queue = set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())
        states = slurm.states({job_id: NAMES[job_id] for job_id in ids})
        return not set(ids) & in_queue and {s.state.split()[0] for s in states.values()} == {"CANCELLED"}

    wait_until(accounted, timeout=90, interval=1)
    before = sandbox_connection.commands_run
    assert len(slurm.states({job_id: NAMES[job_id] for job_id in ids})) == 200
    assert sandbox_connection.commands_run - before == 1, "squeue and sacct in one remote program"


def test_shell_injection_reaches_slurm_as_inert_text(slurm: SlurmScheduler, tmp_path: Path, sandbox: Sandbox) -> None:
    marker = f"/home/{sandbox.user}/scratch/pwned-{uuid.uuid4().hex[:6]}"
    hostile = HOSTILE.format(marker=marker)
    submission = job(slurm, f"printf '%s' {subprocess.list2cmdline([hostile])!s} >/dev/null; exit 0")
    work_dir = f"{slurm.scratch_root}/dir with $(touch {marker}) and ;"
    submission = submission.model_copy(
        update={"work_dir": work_dir, "stdout_path": f"{work_dir}/out `touch {marker}`.log"}
    )
    state = ended(slurm, submit(slurm, submission))
    assert state.state in ("COMPLETED", "FAILED")
    files = slurm.read_files({submission.stdout_path: 0, f"{marker}; touch {marker}": 0})
    assert files[f"{marker}; touch {marker}"].data == "", "the hostile path was read as a name, not run"
    with pytest.raises(PermanentSchedulerError, match="not a safe Slurm job name"):
        submit(slurm, submission.model_copy(update={"name": f"x; touch {marker}"}))
    with pytest.raises(PermanentSchedulerError, match="not a Slurm job id"):
        slurm.cancel(f"1; touch {marker}")
    assert slurm.states({f"1; touch {marker}": "x"}) == {}
    assert not Path(marker).exists()
    assert Path(work_dir).is_dir()


def test_permanent_errors_say_what_to_fix(slurm: SlurmScheduler) -> None:
    with pytest.raises(PermanentSchedulerError, match=r"(?s)Invalid account.*\(check the allocation"):
        submit(slurm, job(slurm, "true", "-A", "nosuchproject"))
    with pytest.raises(PermanentSchedulerError, match=r"(?s)invalid partition.*\(the queue does not exist"):
        submit(slurm, job(slurm, "true").model_copy(update={"sbatch_args": ["-p", "nosuchqueue", "-t", "00:01:00"]}))
    with pytest.raises(PermanentSchedulerError, match="time limit"):
        submit(slurm, job(slurm, "true").model_copy(update={"sbatch_args": ["-p", "gpu-a100-dev", "-t", "03:00:00"]}))


def test_refused_login_is_permanent_and_unreachable_host_transient(sandbox: Sandbox, tmp_path: Path) -> None:
    wrong_host_key = (
        f"[127.0.0.1]:{sandbox.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIx1ZqcIgIqbqh0SWPyEzf2mgUC7cNvjzPBtQ4VKq1E3"
    )
    with SshConnection(
        host=sandbox.host,
        port=sandbox.port,
        username=sandbox.user,
        private_key_path=sandbox.key,
        known_hosts=wrong_host_key,
    ) as bad:
        with pytest.raises(PermanentSchedulerError, match="Host key verification failed"):
            bad.run(["true"])
    with SshConnection(
        host="127.0.0.1", port=1, username=sandbox.user, private_key_path=sandbox.key, known_hosts=""
    ) as down:
        with pytest.raises(TransientSchedulerError, match="Connection refused"):
            down.run(["true"])


def test_resources_and_accounting(slurm: SlurmScheduler) -> None:
    queues = {q.queue: q for q in slurm.resources()}
    assert {"gpu-a100", "gpu-a100-dev", "gpu-h100"} <= set(queues) and "rtx" not in queues
    assert queues["gpu-a100"].nodes_total == 1
    assert queues["gpu-a100"].gpus_idle == queues["gpu-a100"].nodes_idle * 3
    start = datetime.now(timezone.utc) - timedelta(seconds=5)
    submission = job(slurm, "sleep 1")
    job_id = submit(slurm, submission)
    ended(slurm, job_id)

    # slurmdbd records a job's eligible time a moment after it ends; windowed sacct catches up
    def accounted() -> list[dict[str, str]]:
        rows = [
            dict(zip(SACCT_FIELDS, row))
            for row in slurm.accounting(start, datetime.now(timezone.utc) + timedelta(minutes=1))
        ]
        return [row for row in rows if row["JobID"].split(".")[0] == job_id]

    rows = wait_until(accounted, timeout=30, interval=1)
    job_row = next(row for row in rows if row["JobID"] == job_id)
    assert (job_row["JobName"], job_row["Partition"], job_row["State"], job_row["NNodes"], job_row["Account"]) == (
        submission.name,
        "gpu-a100",
        "COMPLETED",
        "1",
        "sandbox",
    )
    assert job_row["Elapsed"] >= "00:00:01" and "node=1" in job_row["AllocTRES"]
    assert {row["JobID"] for row in rows} >= {job_id, f"{job_id}.batch"}, "steps come as rows of their own"


def test_a_poll_of_thousands_of_files_with_the_result_of_an_ended_job_is_one_command(
    slurm: SlurmScheduler, sandbox_connection: SshConnection
) -> None:
    done = job(slurm, """echo '{"rms": 1}' > result.json""")
    done_id = submit(slurm, done)
    ended(slurm, done_id)
    held = job(slurm, "true", "--hold")
    held_id = submit(slurm, held)
    sandbox_connection.run(
        ["bash", "-c", 'echo "{}" > "$1"', "write", f"{held.work_dir}/result.json"]
    )  # not read: not ended
    missing = {
        f"{slurm.scratch_root}/no-such-job-{index:05d}/output/progress": 0 for index in range(3000)
    }  # 200 KB of paths
    results = {done_id: f"{done.work_dir}/result.json", held_id: f"{held.work_dir}/result.json"}
    before = sandbox_connection.commands_run
    snapshot = slurm.poll({done_id: done.name, held_id: held.name}, {**missing, done.stdout_path: 0}, results)
    assert sandbox_connection.commands_run - before == 1
    assert {job_id: state.state for job_id, state in snapshot.states.items()} == {
        done_id: "COMPLETED",
        held_id: "PENDING",
    }
    assert snapshot.files[results[done_id]].data == '{"rms": 1}\n' and results[held_id] not in snapshot.files
    assert len(snapshot.files) == len(missing) + 2 and {snapshot.files[path].data for path in missing} == {""}
    slurm.cancel(held_id)


def test_a_poll_of_4000_jobs_that_left_the_queue_is_chunked_under_the_argument_limit(
    slurm: SlurmScheduler, sandbox_connection: SshConnection
) -> None:
    """After an outage thousands of jobs may need accounting at once: 4,000 names of 37 characters
    are 148 KiB, over Linux's 128 KiB for one argument, so a single `sacct --name=` could not run."""
    done = job(slurm, "true")
    done_id = submit(slurm, done)
    ended(slurm, done_id)
    gone = {str(9_000_000 + index): f"tacc-{uuid.uuid4().hex}" for index in range(3999)}  # never in this cluster
    before = sandbox_connection.commands_run
    states = slurm.states({**gone, done_id: done.name})
    assert sandbox_connection.commands_run - before == 1, "still one remote command"
    assert {job_id: state.state for job_id, state in states.items()} == {done_id: "COMPLETED"}
    found = slurm.find([*gone.values(), done.name], datetime.now(timezone.utc) - timedelta(hours=1))
    assert {name: state.job_id for name, state in found.items()} == {done.name: done_id}


def test_find_keeps_the_first_job_of_a_name_not_a_copy_run_by_hand_later(
    slurm: SlurmScheduler, sandbox_connection: SshConnection
) -> None:
    """A user who runs the generated script again by hand makes a second job of the name:
    reconciliation keeps the orchestrator's (the first since its submission began), whether it
    still waits or runs, or has ended and the copy is in the queue."""
    since = datetime.now(timezone.utc) - timedelta(minutes=1)
    ours = job(slurm, "sleep 4")
    ours_id = submit(slurm, ours)
    by_hand = sandbox_connection.run(
        ["sbatch", "--parsable", f"--job-name={ours.name}", "-p", "gpu-a100", "-t", "00:05:00", "--output=/dev/null"]
        + ["--begin=now+60", "--wrap", "sleep 30"]
    )
    copy_id = by_hand.stdout.strip().split(";")[0]
    assert by_hand.returncode == 0 and copy_id.isdigit() and copy_id != ours_id, by_hand.stderr
    try:
        assert slurm.find([ours.name], since)[ours.name].job_id == ours_id, "both in the queue"
        ended(slurm, ours_id)
        assert slurm.find([ours.name], since)[ours.name].job_id == ours_id, "ours in accounting, the copy queued"
    finally:
        sandbox_connection.run(["scancel", copy_id])
