"""The embedded cluster: real detached processes with Slurm's semantics."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.processes import process_alive
from tacc_jobs.schedulers import SACCT_FIELDS, JobSubmission
from tacc_jobs.schedulers.local import LocalScheduler
from tests.conftest import state_of, wait_until

ENDED = ("COMPLETED", "FAILED", "TIMEOUT", "CANCELLED", "NODE_FAIL")


@pytest.fixture
def cluster(tmp_path: Path) -> LocalScheduler:
    return LocalScheduler(tmp_path / "cluster")


def submission(
    cluster: LocalScheduler, body: str, *, time_limit: str = "00:01:00", nodes: int = 1, name: str | None = None
) -> JobSubmission:
    name = name or f"t-{uuid.uuid4().hex[:12]}"
    work_dir = Path(cluster.scratch_root) / "jobs" / name
    return JobSubmission(
        name=name,
        script=f"#!/bin/bash\n{body}\n",
        work_dir=str(work_dir),
        stdout_path=str(work_dir / "stdout.log"),
        stderr_path=str(work_dir / "stderr.log"),
        sbatch_args=["-p", "local-gpu", "-N", str(nodes), "--ntasks-per-node", "1", "-t", time_limit],
    )


def final_state(cluster: LocalScheduler, job_id: str, timeout: float = 30):
    return wait_until(lambda: (s := state_of(cluster, job_id)).state.split()[0] in ENDED and s, timeout)


def test_job_completes_with_output_and_times(cluster: LocalScheduler) -> None:
    job = submission(cluster, 'echo "hello from $SLURM_JOB_ID on $SLURM_JOB_PARTITION"; echo oops >&2')
    job_id = cluster.submit(job)
    state = final_state(cluster, job_id)
    assert (state.state, state.exit_code) == ("COMPLETED", "0:0")
    assert state.start <= state.end
    assert Path(job.stdout_path).read_text() == f"hello from {job_id} on local-gpu\n"
    assert Path(job.stderr_path).read_text() == "oops\n"
    assert Path(job.work_dir, "job.sbatch").read_text().startswith("#!/bin/bash")


def test_failing_job_keeps_its_exit_code(cluster: LocalScheduler) -> None:
    state = final_state(cluster, cluster.submit(submission(cluster, "exit 3")))
    assert (state.state, state.exit_code) == ("FAILED", "3:0")


def test_wall_time_is_enforced(cluster: LocalScheduler) -> None:
    job_id = cluster.submit(submission(cluster, "sleep 60", time_limit="00:00:02"))
    state = final_state(cluster, job_id)
    assert state.state == "TIMEOUT"
    assert timedelta(seconds=1.5) < state.end - state.start < timedelta(seconds=10)


def test_jobs_wait_for_free_nodes_and_cancel_while_pending(cluster: LocalScheduler) -> None:
    blocker = cluster.submit(submission(cluster, "sleep 60", nodes=2))
    wait_until(lambda: state_of(cluster, blocker).state == "RUNNING")
    waiting = cluster.submit(submission(cluster, "echo never"))
    wait_until(lambda: state_of(cluster, waiting).reason == "Resources")
    assert state_of(cluster, waiting).state == "PENDING"
    assert [(q.queue, q.nodes_idle, q.gpus_idle) for q in cluster.resources()][0] == ("local-gpu", 0, 0)
    cluster.cancel(waiting)
    cluster.cancel(blocker)
    assert final_state(cluster, waiting).state.startswith("CANCELLED by ")
    assert final_state(cluster, blocker).state.startswith("CANCELLED by ")
    assert state_of(cluster, waiting).start is None
    assert not Path(cluster.load_job(waiting).stdout_path).exists()


def test_a_pending_job_whose_supervisor_died_still_runs_when_nodes_free(cluster: LocalScheduler) -> None:
    """The embedded cluster's controller for a pending job is its supervisor: killed (OOM, a
    reboot's kill of every session), the next look at the job starts another, as slurmctld keeps it."""
    blocker = cluster.submit(submission(cluster, "sleep 60", nodes=2))
    wait_until(lambda: state_of(cluster, blocker).state == "RUNNING")
    waiting = cluster.submit(submission(cluster, "echo ran"))
    wait_until(lambda: state_of(cluster, waiting).reason == "Resources")
    dead = cluster.read_state(waiting)["supervisor_pid"]
    os.kill(dead, signal.SIGKILL)
    wait_until(lambda: not process_alive(dead))
    assert state_of(cluster, waiting).state == "PENDING"
    revived = cluster.read_state(waiting)["supervisor_pid"]
    assert revived != dead and process_alive(revived)
    assert state_of(cluster, waiting).state == "PENDING" and cluster.read_state(waiting)["supervisor_pid"] == revived, (
        "one revival"
    )
    cluster.cancel(blocker)
    state = final_state(cluster, waiting)
    assert (state.state, Path(cluster.load_job(waiting).stdout_path).read_text()) == ("COMPLETED", "ran\n")


def test_cancel_while_running_kills_the_process_group(cluster: LocalScheduler, tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    job_id = cluster.submit(submission(cluster, f"(sleep 3; touch {marker}) & sleep 60"))
    wait_until(lambda: state_of(cluster, job_id).state == "RUNNING")
    cluster.cancel(job_id)
    state = final_state(cluster, job_id)
    assert state.state.startswith("CANCELLED") and state.end is not None
    ended = state_of(cluster, job_id)
    cluster.cancel(job_id)  # idempotent: nothing rewritten, nothing signalled
    assert state_of(cluster, job_id) == ended
    time.sleep(4)
    assert not marker.exists(), "a child of the cancelled job kept running"


def test_jobs_outlive_the_process_that_submitted_them(cluster: LocalScheduler) -> None:
    script = (
        "import sys; from pathlib import Path; from tacc_jobs.schedulers.local import LocalScheduler;"
        "from tests.test_local_scheduler import submission;"
        "c = LocalScheduler(Path(sys.argv[1])); print(c.submit(submission(c, 'sleep 2; echo done')))"
    )
    job_id = subprocess.run(
        [sys.executable, "-c", script, str(cluster.root)], capture_output=True, text=True, check=True
    ).stdout.strip()
    restarted = LocalScheduler(cluster.root)
    assert state_of(restarted, job_id).state in ("PENDING", "RUNNING")
    assert final_state(restarted, job_id).state == "COMPLETED"


def test_states_reports_many_jobs_and_skips_unknown_ids(cluster: LocalScheduler) -> None:
    ids = [cluster.submit(submission(cluster, "true")) for _ in range(3)]
    for job_id in ids:
        final_state(cluster, job_id)
    names = {job_id: cluster.load_job(job_id).name for job_id in ids}
    assert set(cluster.states({**names, "999": "t", "x; rm -rf /": "t", ids[0]: "another-job"})) == set(ids[1:])


def test_tacc_refusals(cluster: LocalScheduler) -> None:
    job = submission(cluster, "true")
    with pytest.raises(PermanentSchedulerError, match="--gres is not supported at TACC"):
        cluster.submit(job.model_copy(update={"sbatch_args": [*job.sbatch_args, "--gres", "gpu:2"]}))
    with pytest.raises(PermanentSchedulerError, match="invalid partition specified: gpu-a100"):
        cluster.submit(job.model_copy(update={"sbatch_args": ["-p", "gpu-a100"]}))
    with pytest.raises(PermanentSchedulerError, match="violates accounting/QOS policy"):
        cluster.submit(job.model_copy(update={"sbatch_args": ["-p", "local-gpu-dev", "-N", "2"]}))


def test_accounting_window(cluster: LocalScheduler) -> None:
    before = datetime.now(timezone.utc)
    job_id = cluster.submit(submission(cluster, "sleep 1.2", nodes=2))
    final_state(cluster, job_id)
    rows = [dict(zip(SACCT_FIELDS, row)) for row in cluster.accounting(before, datetime.now(timezone.utc))]
    assert [(r["JobID"], r["State"], r["NNodes"], r["Partition"], r["ExitCode"]) for r in rows] == [
        (job_id, "COMPLETED", "2", "local-gpu", "0:0")
    ]
    assert "gres/gpu=8" in rows[0]["AllocTRES"] and rows[0]["Elapsed"] in ("00:00:01", "00:00:02")
    assert rows[0]["Start"] >= before.strftime("%Y-%m-%dT%H:%M:%S")
    assert list(cluster.accounting(before - timedelta(hours=2), before - timedelta(hours=1))) == []


def test_read_files_from_offsets(cluster: LocalScheduler, tmp_path: Path) -> None:
    log = tmp_path / "log"
    log.write_text("one\ntwo\n")
    first = cluster.read_files({str(log): 0, str(tmp_path / "missing"): 0})
    assert first[str(log)].data == "one\ntwo\n" and first[str(tmp_path / "missing")].data == ""
    with log.open("a") as handle:
        handle.write("three\n")
    assert cluster.read_files({str(log): first[str(log)].next_offset})[str(log)].data == "three\n"
    assert cluster.read_files({str(log): 0}, limit=6)[str(log)].data == "three\n"


def test_a_held_job_waits_without_a_process_until_released(cluster: LocalScheduler) -> None:
    job = submission(cluster, "echo released")
    job_id = cluster.submit(job.model_copy(update={"sbatch_args": [*job.sbatch_args, "--hold"]}))
    time.sleep(0.5)
    state = state_of(cluster, job_id)
    assert (state.state, state.reason) == ("PENDING", "JobHeldUser")
    assert "supervisor_pid" not in cluster.read_state(job_id), "a held job has no process"
    cluster.release(job_id)
    assert final_state(cluster, job_id).state == "COMPLETED"
    assert Path(job.stdout_path).read_text() == "released\n"


def test_a_poll_reads_states_files_and_the_results_of_ended_jobs_only(cluster: LocalScheduler) -> None:
    done = submission(cluster, "echo '{\"rms\": 1}' > result.json")
    done_id = cluster.submit(done)
    final_state(cluster, done_id)
    held = submission(cluster, "true")
    held_id = cluster.submit(held.model_copy(update={"sbatch_args": [*held.sbatch_args, "--hold"]}))
    Path(held.work_dir, "result.json").write_text("{}")  # not read: the job has not ended
    results = {job_id: str(Path(job.work_dir, "result.json")) for job_id, job in ((done_id, done), (held_id, held))}
    snapshot = cluster.poll({done_id: done.name, held_id: held.name}, {done.stdout_path: 0}, results)
    assert {job_id: state.state for job_id, state in snapshot.states.items()} == {
        done_id: "COMPLETED",
        held_id: "PENDING",
    }
    assert {path: tail.data for path, tail in snapshot.files.items()} == {
        done.stdout_path: "",
        results[done_id]: '{"rms": 1}\n',
    }


def test_a_cluster_written_before_its_indexes_is_indexed_on_first_use(cluster: LocalScheduler) -> None:
    running = submission(cluster, "sleep 30", nodes=2)
    running_id = cluster.submit(running)
    wait_until(lambda: state_of(cluster, running_id).state == "RUNNING")
    for index in ("names", "running"):  # as a cluster directory of an earlier version has them
        for entry in (cluster.root / index).iterdir():
            entry.unlink()
        (cluster.root / index).rmdir()
    assert cluster.find([running.name], datetime.now(timezone.utc))[running.name].job_id == running_id
    assert cluster.submit(running) == running_id, "a resubmission adopts the job of its name"
    assert cluster.allocated_nodes() == 2
    cluster.cancel(running_id)
    assert cluster.allocated_nodes() == 0
