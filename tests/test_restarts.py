"""A crash is not a cancel: restarts of the orchestrator never cost a job its run.

Faults injected for real on the local stack (Prefect server, process worker, embedded cluster):
SIGTERM to a waiting flow run's process (a host shutdown, a container stop), SIGKILL to
another with its worker (killed with its host: the zombie automation crashes it once its
heartbeats stop), and
`scripts/stack.sh down` then `up` while one job runs and one waits (an upgrade), the Prefect
server stopped for two minutes under a waiting run. Nothing here
starts a sweep: the every-minute watch-jobs schedule follows the jobs to their ends.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.schedulers.local import LocalScheduler
from tests.conftest import REPO, state_of, wait_until
from tests.test_e2e import (
    full_local_cluster,
    prefect_cli,
    read_flow_run,
    running_stack,
    stack_store,
    suspended_submission,
)

PORT = 4331
TRACKED = "watch-jobs tracked it to its end"

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    # zombies crashed after 150 s of silence, not the default 10 minutes: longer than the server's
    # two-minute absence below (its live run must not be crashed), shorter than a test should wait
    with running_stack(tmp_path_factory, PORT, TACC_STACK_ZOMBIE_AFTER_SECONDS="150") as env:
        yield env


def start_job(env: dict[str, str], gpu_count: int, step_seconds: float) -> tuple[str, str]:
    """Start a submit-job deployment run of an 8-chunk AlphaCal job; its user and flow run id."""
    user = f"rs{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": gpu_count,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "local",
        "params": {"step_seconds": step_seconds},
    }
    started = prefect_cli(
        env, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}"
    )
    assert started.returncode == 0, started.stdout + started.stderr
    return user, started.stdout.split("UUID: ")[1].split()[0]


def job_in(env: dict[str, str], user: str, *statuses: JobStatus) -> JobRecord:
    """The user's job, once it is in one of `statuses` with its scheduler id."""
    store = stack_store(env)
    return wait_until(
        lambda: next((r for r in store.history(user).items if r.status in statuses and r.scheduler_job_id), None),
        timeout=120,
        interval=0.5,
    )


def flow_run_processes(env: dict[str, str], flow_run_id: uuid.UUID) -> list[int]:
    """The process that runs this flow run: the worker's child with the run's id in its
    environment (the embedded cluster's job supervisors inherit the id too, but not the parent)."""
    worker = (Path(env["TACC_ORCH_HOME"]) / "stack" / "worker.pid").read_text().strip()
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            parent = proc.name.isdigit() and (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            if parent == worker and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def killed_with_its_host(env: dict[str, str], record: JobRecord) -> None:
    """SIGKILL the worker and the run's processes (its supervisor, then the engine under it) at
    once, as a host that dies takes them: nothing is left to report the run's end. The embedded
    cluster's job supervisors are not among them (they stand for TACC's nodes)."""
    worker = int((Path(env["TACC_ORCH_HOME"]) / "stack" / "worker.pid").read_text())
    supervisors = flow_run_processes(env, record.flow_run_id)
    parents, engines = {}, []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit():
                parents[int(proc.name)] = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if b"prefect.engine" in (proc / "cmdline").read_bytes():
                    engines.append(int(proc.name))
        except OSError:
            continue

    def under(pid: int, ancestors: list[int]) -> bool:
        while pid in parents and pid not in ancestors:
            pid = parents[pid]
        return pid in ancestors

    engines = [pid for pid in engines if under(pid, supervisors)]
    assert supervisors and engines, f"the run's processes were found: {supervisors}, {engines}"
    os.killpg(worker, signal.SIGKILL)  # the worker leads its process group (stack.sh starts it with setsid)
    for pid in [*supervisors, *engines]:
        os.kill(pid, signal.SIGKILL)


def ends_tracked_by_watch_jobs(env: dict[str, str], record: JobRecord) -> dict[str, object]:
    """Wait for the job to end COMPLETED (scheduled sweeps only) and its crashed run to end with it."""
    store = stack_store(env)
    ended = wait_until(lambda: (r := store.get(record.id)).status.is_terminal and r, timeout=240, interval=1)
    assert ended.status is JobStatus.COMPLETED and ended.result and ended.result["chunks"] == 8, ended
    assert ended.charged_su and ended.charged_su > 0, "a job whose run crashed is still charged"
    flow_run = wait_until(
        lambda: (run := read_flow_run(env, record.flow_run_id))["state_type"] == "COMPLETED" and run,
        timeout=150,
        interval=1,
    )
    assert TRACKED in (flow_run["state"]["message"] or ""), flow_run["state"]
    return flow_run


def jobs_of(cluster: LocalScheduler, record: JobRecord) -> list[str]:
    name = scheduler_job_name(record.id)
    return [job.name for job in cluster.jobs_dir.iterdir() if cluster.load_job(job.name).name == name]


def crashed_run(env: dict[str, str], record: JobRecord, timeout: float) -> dict[str, object]:
    """The job's flow run once it has ended, which must be Crashed (a crash is not a cancel)."""
    ended = wait_until(
        lambda: (
            (run := read_flow_run(env, record.flow_run_id))["state_type"] in ("CRASHED", "CANCELLED", "FAILED") and run
        ),
        timeout=timeout,
        interval=0.5,
    )
    assert ended["state_type"] == "CRASHED", ended["state"]
    return ended


def test_sigterm_or_sigkill_to_a_waiting_run_leaves_its_job_running_to_its_end(stack: dict[str, str]) -> None:
    """SIGTERM: the run says it crashed. Killed with its host (SIGKILL to the worker and the
    run's processes): it cannot, and its heartbeats stop; the stack's zombie automation marks it
    Crashed after 150 s of silence, under the new worker."""
    (term_user, _), (kill_user, _) = (start_job(stack, gpu_count=4, step_seconds=4) for _ in range(2))
    terminated, killed = job_in(stack, term_user, JobStatus.RUNNING), job_in(stack, kill_user, JobStatus.RUNNING)
    processes = flow_run_processes(stack, terminated.flow_run_id)
    assert processes, "the run's process was found"
    for pid in processes:
        os.kill(pid, signal.SIGTERM)
    crashed_run(stack, terminated, timeout=60)
    killed_with_its_host(stack, killed)
    cluster = LocalScheduler(Path(stack["TACC_ORCH_HOME"]) / "local-cluster")
    assert read_flow_run(stack, killed.flow_run_id)["state_type"] == "RUNNING", "a killed run cannot say so"
    for record in (terminated, killed):
        assert state_of(cluster, record.scheduler_job_id).state == "RUNNING", "a crash is not a cancel"
        assert stack_store(stack).get(record.id).status is JobStatus.RUNNING
    up = subprocess.run(  # the host back: a new worker
        [str(REPO / "scripts" / "stack.sh"), "up"], env=stack, capture_output=True, text=True, timeout=600
    )
    assert up.returncode == 0, up.stdout + up.stderr
    zombie = crashed_run(stack, killed, timeout=240)  # 150 s of silence, and the trigger's evaluation
    assert "No heartbeat" in (zombie["state"]["message"] or ""), zombie["state"]
    for record in (terminated, killed):
        ends_tracked_by_watch_jobs(stack, record)
        assert jobs_of(cluster, record) == [record.scheduler_job_id]


def test_stack_down_and_up_while_jobs_run_and_queue_cancels_nothing(stack: dict[str, str]) -> None:
    """An upgrade: the stack stops (the worker on SIGINT takes its runs' processes with it) and starts again."""
    running_user, _ = start_job(stack, gpu_count=8, step_seconds=12)  # both nodes, for longer than a slow down
    running = job_in(stack, running_user, JobStatus.RUNNING)
    queued_user, _ = start_job(stack, gpu_count=4, step_seconds=0.5)
    queued = job_in(stack, queued_user, JobStatus.QUEUING)
    script = str(REPO / "scripts" / "stack.sh")
    down = subprocess.run([script, "down"], env=stack, capture_output=True, text=True, timeout=120)
    try:
        assert down.returncode == 0, down.stdout + down.stderr
        assert "stopped 2 flow run process(es)" in down.stderr, (
            down.stderr
        )  # else they run on: old code after an upgrade
        cluster = LocalScheduler(Path(stack["TACC_ORCH_HOME"]) / "local-cluster")
        assert state_of(cluster, running.scheduler_job_id).state == "RUNNING"
        assert state_of(cluster, queued.scheduler_job_id).state == "PENDING"
        store = stack_store(stack)
        assert (store.get(running.id).status, store.get(queued.id).status) == (JobStatus.RUNNING, JobStatus.QUEUING)
    finally:  # the module's other tests need the stack
        up = subprocess.run([script, "up"], env=stack, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, up.stdout + up.stderr
    for record in (running, queued):
        flow_run = ends_tracked_by_watch_jobs(stack, record)
        print(
            f"stack down/up: job {record.id} COMPLETED, its run {flow_run['state_name']}: {flow_run['state']['message']}"
        )
        assert jobs_of(cluster, record) == [record.scheduler_job_id]


def test_a_suspended_run_whose_persisted_results_were_wiped_resumes_without_a_second_job(stack: dict[str, str]) -> None:
    """The resumed run finds its record and its submission in the store, not only in its cache."""
    user = f"rs{uuid.uuid4().hex[:6]}"
    storage = Path(stack["PREFECT_HOME"]) / "storage"
    with full_local_cluster(stack) as cluster:
        record = suspended_submission(stack, user)
        assert any(storage.iterdir()), "the run persisted its results"
        shutil.rmtree(storage)
    flow_run = wait_until(
        lambda: (
            (run := read_flow_run(stack, record.flow_run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
            and run
        ),
        timeout=300,
        interval=1,
    )
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    store = stack_store(stack)
    assert store.history(user).total == 1 and store.get(record.id).status is JobStatus.COMPLETED
    assert jobs_of(cluster, record) == [record.scheduler_job_id]


def test_the_prefect_server_away_for_two_minutes_fails_no_waiting_run(stack: dict[str, str]) -> None:
    """The API goes away (the server stopped: a crash, a database migration) while a run follows
    its job: the run keeps following it and ends COMPLETED itself once the server is back."""
    user, _ = start_job(stack, gpu_count=4, step_seconds=22)  # about three minutes of work
    record = job_in(stack, user, JobStatus.RUNNING)
    server = Path(stack["TACC_ORCH_HOME"]) / "stack" / "server.pid"
    os.killpg(int(server.read_text()), signal.SIGTERM)
    try:
        wait_until(
            lambda: subprocess.run(["pgrep", "-g", server.read_text().strip()], capture_output=True).returncode, 60
        )
        time.sleep(120)
        store = stack_store(stack)
        assert store.get(record.id).status is JobStatus.RUNNING, "the job ran on while the API was away"
    finally:  # the server back, the worker and the run left as they are
        up = subprocess.run(
            [str(REPO / "scripts" / "stack.sh"), "up"], env=stack, capture_output=True, text=True, timeout=600
        )
    assert up.returncode == 0, up.stdout + up.stderr
    flow_run = wait_until(
        lambda: (run := read_flow_run(stack, record.flow_run_id))["state_type"] not in ("RUNNING", "PENDING") and run,
        timeout=300,
        interval=2,
    )
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    assert TRACKED not in (flow_run["state"]["message"] or ""), "the run followed its job itself"
    ended = store.get(record.id)
    assert ended.status is JobStatus.COMPLETED and ended.result["chunks"] == 8 and ended.charged_su
