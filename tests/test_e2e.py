"""End to end: the local stack (real Prefect server and worker) and `prefect deployment run`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psycopg
import pytest

from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.store import JobStore, migrate
from tacc_jobs.store.engine import sqlite_engine
from tests.conftest import POSTGRES_ADMIN_URL, REPO, Webhook, state_of, wait_until

PORT = 4317


@contextmanager
def running_stack(tmp_path_factory: pytest.TempPathFactory, port: int) -> Iterator[dict[str, str]]:
    """`scripts/stack.sh up` on `port`, with homes and database of its own; `down` afterwards."""
    home = tmp_path_factory.mktemp("stack")
    env = {**os.environ, "TACC_STACK_PORT": str(port), "TACC_ORCH_HOME": str(home / "orch"), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "TACC_ORCH_POLL_MIN_SECONDS": "0.5"}
    up = subprocess.run([str(REPO / "scripts" / "stack.sh"), "up"], env=env, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    try:
        yield env
    finally:
        subprocess.run([str(REPO / "scripts" / "stack.sh"), "down"], env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The local stack on its own port, homes and database."""
    with running_stack(tmp_path_factory, PORT) as env:
        yield env


def stack_store(env: dict[str, str]) -> JobStore:
    """The stack's job store (its worker's SQLite), migrated if no flow has opened it yet."""
    engine = sqlite_engine(f"sqlite:///{Path(env['TACC_ORCH_HOME']) / 'jobs.db'}")
    migrate(engine)
    return JobStore(engine)


def api(env: dict[str, str], path: str, body: dict[str, object] | None = None) -> object:
    response = httpx.post(f"{env['PREFECT_API_URL']}{path}", json=body or {}, timeout=30)
    response.raise_for_status()
    return response.json()


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(REPO / ".venv" / "bin" / "prefect"), *args], env=env, capture_output=True, text=True, timeout=timeout)


def read_flow_run(env: dict[str, str], flow_run_id: uuid.UUID | str) -> dict[str, object]:
    return api(env, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})[0]  # type: ignore[index]


def test_every_deployment_is_there_and_scheduled(stack: dict[str, str]) -> None:
    deployments = {d["name"]: d for d in api(stack, "/deployments/filter")}  # type: ignore[union-attr]
    assert set(deployments) >= {"submit-job", "submit-batch", "plan-job", "plan-batch", "watch-jobs", "cancel-job",
                                "stage-dataset", "cluster-resources", "ingest-job-metadata", "usage-report", "cleanup",
                                "register-tapis-apps"}
    crons = {name: [s["schedule"].get("cron") for s in d["schedules"]] for name, d in deployments.items()}
    assert crons["watch-jobs"] == ["* * * * *"] and crons["ingest-job-metadata"] == ["0 2 * * *"]
    assert crons["usage-report"] == ["0 6 * * 1"] and crons["cleanup"] == ["30 3 * * *"]
    assert deployments["ingest-job-metadata"]["schedules"][0]["schedule"]["timezone"] == "America/Chicago"


def test_prefect_deployment_run_follows_a_job_to_completed(stack: dict[str, str]) -> None:
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "00:10:00",
               "user_id": user, "system": "local", "params": {"rfi_strategy": "high", "step_seconds": 0.3}}
    run = prefect_cli(stack, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}", "--watch", timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in run.stdout
    store = stack_store(stack)
    record = store.history(user).items[0]
    assert record.status is JobStatus.COMPLETED and record.result["samples"] == 12000
    artifacts = api(stack, "/artifacts/filter", {"artifacts": {"key": {"any_": [f"job-{record.id}", f"job-summary-{record.id}"]}}})
    assert {a["key"] for a in artifacts} == {f"job-{record.id}", f"job-summary-{record.id}"}  # type: ignore[union-attr]
    flow_run = read_flow_run(stack, record.flow_run_id)
    assert flow_run["name"] == "submit-job/AlphaCal/VLASS2.1.eb123456" and flow_run["state_type"] == "COMPLETED"


def test_cancelling_a_deployment_run_cancels_its_scheduler_job(stack: dict[str, str]) -> None:
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "00:10:00",
               "user_id": user, "system": "local", "params": {"rfi_strategy": "low", "step_seconds": 5}}
    started = prefect_cli(stack, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}")
    assert started.returncode == 0, started.stdout + started.stderr
    store = stack_store(stack)

    def running():
        page = store.history(user)
        return page.items[0] if page.items and page.items[0].status is JobStatus.RUNNING else None

    record = wait_until(running, timeout=120, interval=1)
    cancel = prefect_cli(stack, "flow-run", "cancel", str(record.flow_run_id))
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    cluster = LocalScheduler(Path(stack["TACC_ORCH_HOME"]) / "local-cluster")
    wait_until(lambda: state_of(cluster, record.scheduler_job_id).state.startswith("CANCELLED"), timeout=90, interval=1)
    assert wait_until(lambda: store.get(record.id).status is JobStatus.CANCELLED, timeout=30, interval=1)
    wait_until(lambda: read_flow_run(stack, record.flow_run_id)["state_type"] == "CANCELLED", timeout=90, interval=1)


@contextmanager
def full_local_cluster(env: dict[str, str]) -> Iterator[LocalScheduler]:
    """Every node of the stack's embedded cluster taken by a sleeping job: new jobs wait in the queue."""
    cluster = LocalScheduler(Path(env["TACC_ORCH_HOME"]) / "local-cluster")
    work = Path(env["TACC_ORCH_HOME"]) / f"blocker-{uuid.uuid4().hex[:6]}"
    blocker = cluster.submit(JobSubmission(name=f"blocker-{uuid.uuid4().hex[:8]}", script="#!/bin/bash\nsleep 600\n", work_dir=str(work),
                                           stdout_path=str(work / "out"), stderr_path=str(work / "err"),
                                           sbatch_args=["-p", "local-gpu", "-N", str(cluster.total_nodes), "-t", "00:15:00"]))
    try:
        wait_until(lambda: state_of(cluster, blocker).state == "RUNNING", timeout=30)
        yield cluster
    finally:
        cluster.cancel(blocker)


def suspended_submission(env: dict[str, str], user: str) -> JobRecord:
    """Start a submit-job deployment run whose job waits in the queue; return its job once the run is suspended."""
    request = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "00:10:00",
               "user_id": user, "system": "local", "params": {"rfi_strategy": "high", "step_seconds": 0.2}}
    started = prefect_cli(env, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}",
                          "--param", "suspend_after_seconds=1")
    assert started.returncode == 0, started.stdout + started.stderr
    store = stack_store(env)
    record = wait_until(lambda: next(iter(store.history(user).items), None), timeout=120, interval=1)
    wait_until(lambda: read_flow_run(env, record.flow_run_id)["state_name"] == "Suspended", timeout=120, interval=1)
    record = store.get(record.id)
    assert record.status is JobStatus.QUEUING and record.scheduler_job_id
    return record


def sweep(env: dict[str, str]) -> None:
    """One watch-jobs deployment run (the schedule runs it every minute; here, now). The
    deployment allows one run at a time and cancels a new one while a scheduled sweep runs."""
    for _ in range(10):
        run = prefect_cli(env, "deployment", "run", "watch-jobs/watch-jobs", "--watch", timeout=300)
        if run.returncode == 0 or "'Cancelled'" not in run.stdout:
            break
        time.sleep(2)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]


def test_a_queued_job_suspends_its_run_and_watch_jobs_resumes_it_without_a_second_submission(stack: dict[str, str]) -> None:
    user = f"e2e{uuid.uuid4().hex[:6]}"
    with full_local_cluster(stack) as cluster:
        record = suspended_submission(stack, user)
        sweep(stack)  # still queued: the run stays suspended
        assert read_flow_run(stack, record.flow_run_id)["state_name"] == "Suspended"
    wait_until(lambda: state_of(cluster, record.scheduler_job_id).state != "PENDING", timeout=30)
    sweep(stack)
    flow_run = wait_until(lambda: (run := read_flow_run(stack, record.flow_run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and run,
                          timeout=240, interval=1)
    assert flow_run["state_type"] == "COMPLETED", flow_run
    store = stack_store(stack)
    assert store.history(user).total == 1 and store.get(record.id).status is JobStatus.COMPLETED
    name = scheduler_job_name(record.id)
    assert [job for job in cluster.jobs_dir.iterdir() if cluster.load_job(job.name).name == name] == [cluster.jobs_dir / record.scheduler_job_id]
    states = httpx.get(f"{stack['PREFECT_API_URL']}/flow_run_states/", params={"flow_run_id": str(record.flow_run_id)}, timeout=30).json()
    names = [state["name"] for state in sorted(states, key=lambda state: state["timestamp"])]
    assert names.index("Suspended") < names.index("Resuming") < names.index("Completed"), names


def test_a_worker_killed_while_its_run_is_suspended_then_the_run_completes_once(stack: dict[str, str]) -> None:
    """Fault injection: the worker dies (SIGKILL) while its run is suspended; a new worker starts;
    watch-jobs resumes the run when its job starts, and it completes with one scheduler job."""
    user = f"e2e{uuid.uuid4().hex[:6]}"
    pid_file = Path(stack["TACC_ORCH_HOME"]) / "stack" / "worker.pid"
    with full_local_cluster(stack) as cluster:
        record = suspended_submission(stack, user)
        worker = int(pid_file.read_text())
        os.killpg(worker, signal.SIGKILL)
        wait_until(lambda: subprocess.run(["kill", "-0", str(worker)], capture_output=True).returncode != 0, timeout=30)
        assert read_flow_run(stack, record.flow_run_id)["state_name"] == "Suspended"
    up = subprocess.run([str(REPO / "scripts" / "stack.sh"), "up"], env=stack, capture_output=True, text=True, timeout=600)
    assert up.returncode == 0 and int(pid_file.read_text()) != worker, up.stdout + up.stderr
    wait_until(lambda: state_of(cluster, record.scheduler_job_id).state != "PENDING", timeout=30)
    sweep(stack)
    flow_run = wait_until(lambda: (run := read_flow_run(stack, record.flow_run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED") and run,
                          timeout=240, interval=1)
    store = stack_store(stack)
    name = scheduler_job_name(record.id)
    jobs = [job.name for job in cluster.jobs_dir.iterdir() if cluster.load_job(job.name).name == name]
    print(f"worker kill -9 while suspended: duplicate_jobs={len(jobs) - 1}, records={store.history(user).total}, "
          f"run={flow_run['state_type']}, record={store.get(record.id).status.value}")
    assert flow_run["state_type"] == "COMPLETED", flow_run
    assert jobs == [record.scheduler_job_id] and store.history(user).total == 1
    assert store.get(record.id).status is JobStatus.COMPLETED


def test_cancelling_a_suspended_run_cancels_its_queued_job(stack: dict[str, str]) -> None:
    with full_local_cluster(stack) as cluster:
        record = suspended_submission(stack, f"e2e{uuid.uuid4().hex[:6]}")
        cancel = prefect_cli(stack, "flow-run", "cancel", str(record.flow_run_id))
        assert cancel.returncode == 0, cancel.stdout + cancel.stderr
        sweep(stack)
        assert state_of(cluster, record.scheduler_job_id).state.startswith("CANCELLED")
        assert stack_store(stack).get(record.id).status is JobStatus.CANCELLED


def test_the_example_automation_notifies_when_a_job_fails(stack: dict[str, str], webhook: Webhook) -> None:
    for extra in ([], ["--replace"]):  # a second run keeps (or with --replace, updates) the one automation
        made = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "deployments.automations", "--webhook-url", webhook.url, *extra],
                              env=stack, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert made.returncode == 0, made.stdout + made.stderr
    automations = [a for a in api(stack, "/automations/filter") if a["name"] == "notify-on-failed-tacc-job"]  # type: ignore[union-attr]
    assert len(automations) == 1 and automations[0]["enabled"]
    assert webhook.url not in json.dumps(api(stack, "/block_documents/filter")), "the webhook URL is a secret"
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "00:00:03",
               "user_id": user, "system": "local", "params": {"step_seconds": 1}}
    run = prefect_cli(stack, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}", "--watch", timeout=300)
    assert "Failed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    records = stack_store(stack).history(user).items
    assert records, run.stdout[-3000:] + run.stderr[-3000:]
    record = records[0]
    assert (record.status, record.reason) == (JobStatus.FAILED, "TIMEOUT")
    text = wait_until(lambda: next((m["text"] for m in webhook.received if str(record.id) in m["text"]), None), timeout=120, interval=1)
    assert text.startswith("TACC job AlphaCal/VLASS2.1.eb123456 FAILED") and f"scheduler job {record.scheduler_job_id}: TIMEOUT" in text, text


def chromium(url: str, *action: str, profile: Path) -> subprocess.CompletedProcess[str]:
    """Debian's headless Chromium with the flags this closed network needs."""
    return subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--window-size=1440,900", "--virtual-time-budget=30000", *action, url],
        capture_output=True, text=True, timeout=180,
    )


def test_the_ui_shows_the_run_and_its_artifacts(stack: dict[str, str], tmp_path: Path) -> None:
    installed = subprocess.run([str(REPO / "scripts" / "install-browser.sh")], capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr
    summaries = api(stack, "/artifacts/filter", {"artifacts": {"key": {"like_": "job-summary-"}}})
    artifacts = [artifact for artifact in summaries if ": COMPLETED" in artifact["data"]]  # type: ignore[union-attr,index]
    assert artifacts, "the deployment test runs first and leaves its summary artifact"
    base = f"http://127.0.0.1:{PORT}"

    def rendered(url: str, text: str) -> bool:  # the UI fetches after load: give it a few tries
        return any(text in chromium(url, "--dump-dom", profile=tmp_path / f"p{attempt}").stdout for attempt in range(3))

    assert rendered(f"{base}/runs", "submit-job/AlphaCal/VLASS2.1.eb123456")
    artifact_page = f"{base}/artifacts/artifact/{artifacts[0]['id']}"  # type: ignore[index]
    assert rendered(artifact_page, "AlphaCal on VLASS2.1.eb123456: COMPLETED")
    shots = REPO / "tests" / "artifacts"
    shots.mkdir(exist_ok=True)
    for name, url in (("ui-runs.png", f"{base}/runs"), ("ui-job-summary.png", artifact_page)):
        shot = chromium(url, f"--screenshot={shots / name}", profile=tmp_path / name)
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", shot.stderr[-2000:]


def test_the_stack_runs_on_a_postgresql_server_database(tmp_path: Path, postgres_url: str) -> None:
    """For teams that outgrow SQLite: the Prefect server's own database on PostgreSQL."""
    server_db = f"prefect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{server_db}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    port = PORT + 5
    env = {**os.environ, "TACC_STACK_PORT": str(port), "TACC_ORCH_HOME": str(tmp_path / "orch"),
           "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
           "PREFECT_API_DATABASE_CONNECTION_URL": f"{base}/{server_db}"}
    stack_script = str(REPO / "scripts" / "stack.sh")
    try:
        up = subprocess.run([stack_script, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        request = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "1h",
                   "user_id": "jdoe", "system": "local"}
        run = subprocess.run([str(REPO / ".venv" / "bin" / "prefect"), "deployment", "run", "plan-job/plan-job",
                              "--param", f"request={json.dumps(request)}", "--watch"], env=env, capture_output=True, text=True, timeout=300)
        assert "Flow run finished successfully in 'Completed'" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        with psycopg.connect(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{server_db}") as connection:
            deployments = connection.execute("SELECT count(*) FROM deployment").fetchone()[0]
            runs = connection.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'").fetchone()[0]
        assert deployments == 12 and runs >= 1, "the server keeps its state in PostgreSQL"
    finally:
        subprocess.run([stack_script, "down"], env=env, capture_output=True, timeout=120)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{server_db}" WITH (FORCE)')
