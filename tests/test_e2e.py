"""End to end: the local stack (real Prefect server and worker) and `prefect deployment run`."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import scheduler_job_name
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.store import JobStore, migrate
from tacc_jobs.store.engine import sqlite_engine
from tests.browser import HeadlessChromium
from tests.conftest import POSTGRES_ADMIN_URL, REPO, Webhook, state_of, wait_until

PORT = 4317
CHICAGO = ZoneInfo("America/Chicago")

pytestmark = [pytest.mark.e2e]


@contextmanager
def running_stack(tmp_path_factory: pytest.TempPathFactory, port: int, **settings: str) -> Iterator[dict[str, str]]:
    """`scripts/stack.sh up` on `port`, with homes and database of its own, and `settings`
    (environment variables); `down` afterwards."""
    home = tmp_path_factory.mktemp("stack")
    env = {
        **os.environ,
        "TACC_STACK_PORT": str(port),
        "TACC_ORCH_HOME": str(home / "orch"),
        "PREFECT_HOME": str(home / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "TACC_ORCH_POLL_MIN_SECONDS": "0.5",
        **settings,
    }
    up = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "up"], env=env, capture_output=True, text=True, timeout=600
    )
    assert up.returncode == 0, f"{up.stdout}\n{up.stderr}"
    env["PREFECT_API_AUTH_STRING"] = (home / "orch" / "stack" / "api-auth").read_text().strip()
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


def api_auth(env: dict[str, str]) -> httpx.BasicAuth:
    """The stack's API credentials (Prefect sends its auth string as HTTP Basic)."""
    user, password = env["PREFECT_API_AUTH_STRING"].split(":", 1)
    return httpx.BasicAuth(user, password)


def api(env: dict[str, str], path: str, body: dict[str, object] | None = None) -> object:
    response = httpx.post(f"{env['PREFECT_API_URL']}{path}", json=body or {}, auth=api_auth(env), timeout=30)
    response.raise_for_status()
    return response.json()


def deployment_runs(
    env: dict[str, str], deployment: str, started_after: datetime | None = None
) -> list[dict[str, object]]:
    """The flow runs of one deployment (those started after `started_after`, when given), by expected start."""
    body: dict[str, object] = {
        "deployments": {"name": {"any_": [deployment]}},
        "sort": "EXPECTED_START_TIME_ASC",
        "limit": 200,
    }
    if started_after:
        body["flow_runs"] = {"start_time": {"after_": started_after.isoformat()}}
    runs: list[dict[str, object]] = api(env, "/flow_runs/filter", body)  # type: ignore[assignment]
    return (
        [run for run in runs if run["start_time"]] if started_after else runs
    )  # the server counts a run yet to start by its expected start


def scheduled_sweep(env: dict[str, str], started_after: datetime) -> dict[str, object]:
    """Wait for a watch-jobs run that its every-minute schedule made, started after `started_after`, to complete."""
    return wait_until(
        lambda: next(
            (
                r
                for r in deployment_runs(env, "watch-jobs", started_after)
                if r["auto_scheduled"] and r["state_type"] == "COMPLETED"
            ),
            None,
        ),
        timeout=150,
        interval=2,
    )


def prefect_cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / ".venv" / "bin" / "prefect"), *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def read_flow_run(env: dict[str, str], flow_run_id: uuid.UUID | str) -> dict[str, object]:
    return api(env, "/flow_runs/filter", {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}})[0]  # type: ignore[index]


def test_every_deployment_is_there_and_scheduled(stack: dict[str, str]) -> None:
    deployments = {d["name"]: d for d in api(stack, "/deployments/filter")}  # type: ignore[union-attr]
    assert set(deployments) >= {
        "submit-job",
        "submit-batch",
        "plan-job",
        "plan-batch",
        "watch-jobs",
        "cancel-job",
        "stage-dataset",
        "cluster-resources",
        "ingest-job-metadata",
        "usage-report",
        "cleanup",
        "register-tapis-apps",
    }
    crons = {name: [s["schedule"].get("cron") for s in d["schedules"]] for name, d in deployments.items()}
    assert crons["watch-jobs"] == ["* * * * *"] and crons["ingest-job-metadata"] == ["0 2 * * *"]
    assert crons["usage-report"] == ["0 6 * * 1"] and crons["cleanup"] == ["30 3 * * *"]
    assert deployments["ingest-job-metadata"]["schedules"][0]["schedule"]["timezone"] == "America/Chicago"


def test_the_api_requires_the_stack_auth_string(stack: dict[str, str]) -> None:
    """Any process on the host could otherwise read every block's secrets, cancel any job, run any deployment."""
    auth_file = Path(stack["TACC_ORCH_HOME"]) / "stack" / "api-auth"
    assert stat.S_IMODE(auth_file.stat().st_mode) == 0o600 and stat.S_IMODE(auth_file.parent.stat().st_mode) == 0o700
    secret = f"probe-{uuid.uuid4().hex}"
    saved = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-c",
            f"from prefect.blocks.system import Secret; Secret(value={secret!r}).save('auth-probe', overwrite=True)",
        ],
        env=stack,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert saved.returncode == 0, saved.stderr
    base = stack["PREFECT_API_URL"]
    read_secrets = {"block_documents": {"name": {"any_": ["auth-probe"]}}, "include_secrets": True}
    for auth in (None, httpx.BasicAuth("admin", "guess")):
        for method, path, body in (
            ("POST", "/block_documents/filter", read_secrets),
            ("POST", "/flow_runs/filter", {}),
            ("POST", "/deployments/filter", {}),
            ("GET", "/admin/settings", None),
        ):
            answer = httpx.request(method, f"{base}{path}", json=body, auth=auth, timeout=30)
            assert answer.status_code == 401 and secret not in answer.text, (path, answer.status_code)
    documents = httpx.post(f"{base}/block_documents/filter", json=read_secrets, auth=api_auth(stack), timeout=30)
    assert documents.status_code == 200 and secret in documents.text
    exports = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "env"],
        env={**stack, "PREFECT_API_AUTH_STRING": ""},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert f"export PREFECT_API_AUTH_STRING={stack['PREFECT_API_AUTH_STRING']}" in exports.stdout, (
        exports.stdout + exports.stderr
    )


def test_up_refuses_a_port_held_by_another_stacks_server(stack: dict[str, str], tmp_path: Path) -> None:
    """A second stack (another home, so another auth string) on the same port is told so; it never
    goes on to deploy into the first, nor reports 401s from deep inside Prefect's CLI."""
    other = {**stack, "TACC_ORCH_HOME": str(tmp_path / "orch"), "PREFECT_HOME": str(tmp_path / "prefect")}
    del other["PREFECT_API_AUTH_STRING"]
    up = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "up"], env=other, capture_output=True, text=True, timeout=300
    )
    assert up.returncode == 1 and "refuses this stack's auth string" in up.stderr, up.stdout + up.stderr
    assert "Traceback" not in up.stderr


def test_every_other_schedule_has_its_next_runs_scheduled_and_status_says_so(stack: dict[str, str]) -> None:
    """The server's scheduler makes the runs the crons promise (SQLAlchemy 2.1 stopped it: no run at all)."""
    local_times = {"ingest-job-metadata": (2, 0), "cleanup": (3, 30), "usage-report": (6, 0)}
    for name, (hour, minute) in local_times.items():
        runs = wait_until(
            lambda name=name: [r for r in deployment_runs(stack, name) if r["state_type"] == "SCHEDULED"],
            timeout=60,
            interval=1,
        )
        assert all(run["auto_scheduled"] for run in runs), runs
        starts = [datetime.fromisoformat(run["expected_start_time"]).astimezone(CHICAGO) for run in runs]
        assert all(
            (start.hour, start.minute) == (hour, minute) and start > datetime.now(CHICAGO) for start in starts
        ), (name, starts)
    assert {
        datetime.fromisoformat(r["expected_start_time"]).astimezone(CHICAGO).weekday()
        for r in deployment_runs(stack, "usage-report")
        if r["state_type"] == "SCHEDULED"
    } == {0}  # Mondays
    status = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "status"], env=stack, capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 0 and "scheduler  ok; next run watch-jobs at " in status.stdout, (
        status.stdout + status.stderr
    )


def test_scheduled_watch_jobs_runs_alone_follow_a_job_submitted_without_waiting(stack: dict[str, str]) -> None:
    """No sweep is started here: the every-minute schedule makes the runs that end the job."""
    since = datetime.now(timezone.utc)
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "local",
        "params": {"step_seconds": 0.5},
    }
    run = prefect_cli(
        stack,
        "deployment",
        "run",
        "submit-job/submit-job",
        "--param",
        f"request={json.dumps(request)}",
        "--param",
        "wait=false",
        "--watch",
        timeout=300,
    )
    assert "Flow run finished successfully in 'Completed'" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    store = stack_store(stack)
    record = store.history(user).items[0]
    assert not record.status.is_terminal, "the run returned at submission, leaving the job to watch-jobs"
    submitted = read_flow_run(stack, record.flow_run_id)
    record = wait_until(lambda: (r := store.get(record.id)).status.is_terminal and r, timeout=180, interval=1)
    assert record.status is JobStatus.COMPLETED and record.result["samples"] == 12000, record

    # the sweep that recorded the end may still be finishing its own run when the record turns terminal
    def a_later_sweep_completed() -> list[dict] | None:
        sweeps = deployment_runs(stack, "watch-jobs", started_after=since)
        later = [
            r
            for r in sweeps
            if r["state_type"] == "COMPLETED"
            and datetime.fromisoformat(r["start_time"]) > datetime.fromisoformat(submitted["end_time"])
        ]
        return sweeps if later else None

    sweeps = wait_until(a_later_sweep_completed, timeout=90, interval=2)
    assert all(r["auto_scheduled"] for r in sweeps), "only the schedule ran watch-jobs here"
    print(f"scheduled sweeps while the job ran: {len(sweeps)}, states {sorted({r['state_name'] for r in sweeps})}")


def test_prefect_deployment_run_follows_a_job_to_completed(stack: dict[str, str]) -> None:
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "local",
        "params": {"rfi_strategy": "high", "step_seconds": 0.3},
    }
    run = prefect_cli(
        stack,
        "deployment",
        "run",
        "submit-job/submit-job",
        "--param",
        f"request={json.dumps(request)}",
        "--watch",
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "Flow run finished successfully in 'Completed'" in run.stdout
    store = stack_store(stack)
    record = store.history(user).items[0]
    assert record.status is JobStatus.COMPLETED and record.result["samples"] == 12000
    artifacts = api(
        stack, "/artifacts/filter", {"artifacts": {"key": {"any_": [f"job-{record.id}", f"job-summary-{record.id}"]}}}
    )
    assert {a["key"] for a in artifacts} == {f"job-{record.id}", f"job-summary-{record.id}"}  # type: ignore[union-attr]
    flow_run = read_flow_run(stack, record.flow_run_id)
    assert flow_run["name"] == "submit-job/AlphaCal/VLASS2.1.eb123456" and flow_run["state_type"] == "COMPLETED"


def test_cancelling_a_deployment_run_cancels_its_scheduler_job(stack: dict[str, str]) -> None:
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "local",
        "params": {"rfi_strategy": "low", "step_seconds": 5},
    }
    started = prefect_cli(
        stack, "deployment", "run", "submit-job/submit-job", "--param", f"request={json.dumps(request)}"
    )
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
    blocker = cluster.submit(
        JobSubmission(
            name=f"blocker-{uuid.uuid4().hex[:8]}",
            script="#!/bin/bash\nsleep 600\n",
            work_dir=str(work),
            stdout_path=str(work / "out"),
            stderr_path=str(work / "err"),
            sbatch_args=["-p", "local-gpu", "-N", str(cluster.total_nodes), "-t", "00:15:00"],
        )
    )
    try:
        wait_until(lambda: state_of(cluster, blocker).state == "RUNNING", timeout=30)
        yield cluster
    finally:
        cluster.cancel(blocker)


def suspended_submission(env: dict[str, str], user: str) -> JobRecord:
    """Start a submit-job deployment run whose job waits in the queue; return its job once the run is suspended."""
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "local",
        "params": {"rfi_strategy": "high", "step_seconds": 0.2},
    }
    started = prefect_cli(
        env,
        "deployment",
        "run",
        "submit-job/submit-job",
        "--param",
        f"request={json.dumps(request)}",
        "--param",
        "suspend_after_seconds=1",
    )
    assert started.returncode == 0, started.stdout + started.stderr
    store = stack_store(env)
    record = wait_until(lambda: next(iter(store.history(user).items), None), timeout=120, interval=1)
    wait_until(lambda: read_flow_run(env, record.flow_run_id)["state_name"] == "Suspended", timeout=120, interval=1)
    record = store.get(record.id)
    assert record.status is JobStatus.QUEUING and record.scheduler_job_id
    return record


def sweep(env: dict[str, str]) -> None:
    """One watch-jobs sweep (the schedule runs it every minute; here, now). A run that finds a
    scheduled sweep under way ends at once, leaving the jobs to it: then it tries again."""
    for _ in range(10):
        run = prefect_cli(env, "deployment", "run", "watch-jobs/watch-jobs", "--watch", timeout=300)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        flow_run_id = run.stdout.split("UUID: ")[1].split()[0]
        logs = api(env, "/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})
        if not any("Another watch-jobs sweep is running" in log["message"] for log in logs):  # type: ignore[union-attr,index]
            return
        time.sleep(2)
    raise AssertionError("no sweep of its own in 10 tries")


def test_a_queued_job_suspends_its_run_and_scheduled_watch_jobs_resumes_it_without_a_second_submission(
    stack: dict[str, str],
) -> None:
    """No sweep is started here: the scheduled watch-jobs runs leave the run suspended while its
    job waits, then resume it once the job starts."""
    user = f"e2e{uuid.uuid4().hex[:6]}"
    with full_local_cluster(stack) as cluster:
        record = suspended_submission(stack, user)
        suspended_at = datetime.now(timezone.utc)
        scheduled_sweep(stack, started_after=suspended_at)  # still queued: the run stays suspended
        assert read_flow_run(stack, record.flow_run_id)["state_name"] == "Suspended"
    wait_until(lambda: state_of(cluster, record.scheduler_job_id).state != "PENDING", timeout=30)
    flow_run = wait_until(
        lambda: (
            (run := read_flow_run(stack, record.flow_run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
            and run
        ),
        timeout=240,
        interval=1,
    )
    assert flow_run["state_type"] == "COMPLETED", flow_run
    store = stack_store(stack)
    assert store.history(user).total == 1 and store.get(record.id).status is JobStatus.COMPLETED
    name = scheduler_job_name(record.id)
    assert [job for job in cluster.jobs_dir.iterdir() if cluster.load_job(job.name).name == name] == [
        cluster.jobs_dir / record.scheduler_job_id
    ]
    states = httpx.get(
        f"{stack['PREFECT_API_URL']}/flow_run_states/",
        params={"flow_run_id": str(record.flow_run_id)},
        auth=api_auth(stack),
        timeout=30,
    ).json()
    names = [state["name"] for state in sorted(states, key=lambda state: state["timestamp"])]
    assert names.index("Suspended") < names.index("Resuming") < names.index("Completed"), names
    sweeps = deployment_runs(stack, "watch-jobs", started_after=suspended_at)
    assert sweeps and all(r["auto_scheduled"] for r in sweeps), "only the schedule ran watch-jobs here"


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
    up = subprocess.run(
        [str(REPO / "scripts" / "stack.sh"), "up"], env=stack, capture_output=True, text=True, timeout=600
    )
    assert up.returncode == 0 and int(pid_file.read_text()) != worker, up.stdout + up.stderr
    wait_until(lambda: state_of(cluster, record.scheduler_job_id).state != "PENDING", timeout=30)
    sweep(stack)
    flow_run = wait_until(
        lambda: (
            (run := read_flow_run(stack, record.flow_run_id))["state_type"] in ("COMPLETED", "FAILED", "CRASHED")
            and run
        ),
        timeout=240,
        interval=1,
    )
    store = stack_store(stack)
    name = scheduler_job_name(record.id)
    jobs = [job.name for job in cluster.jobs_dir.iterdir() if cluster.load_job(job.name).name == name]
    print(
        f"worker kill -9 while suspended: duplicate_jobs={len(jobs) - 1}, records={store.history(user).total}, "
        f"run={flow_run['state_type']}, record={store.get(record.id).status.value}"
    )
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
        made = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "python"),
                "-m",
                "deployments.automations",
                "--webhook-url",
                webhook.url,
                *extra,
            ],
            env=stack,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert made.returncode == 0, made.stdout + made.stderr
    automations = [a for a in api(stack, "/automations/filter") if a["name"] == "notify-on-failed-tacc-job"]  # type: ignore[union-attr]
    assert len(automations) == 1 and automations[0]["enabled"]
    assert webhook.url not in json.dumps(api(stack, "/block_documents/filter")), "the webhook URL is a secret"
    user = f"e2e{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:00:03",
        "user_id": user,
        "system": "local",
        "params": {"step_seconds": 1},
    }
    run = prefect_cli(
        stack,
        "deployment",
        "run",
        "submit-job/submit-job",
        "--param",
        f"request={json.dumps(request)}",
        "--watch",
        timeout=300,
    )
    assert "Failed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    records = stack_store(stack).history(user).items
    assert records, run.stdout[-3000:] + run.stderr[-3000:]
    record = records[0]
    assert (record.status, record.reason) == (JobStatus.FAILED, "TIMEOUT")
    text = wait_until(
        lambda: next((m["text"] for m in webhook.received if str(record.id) in m["text"]), None),
        timeout=120,
        interval=1,
    )
    assert (
        text.startswith("TACC job AlphaCal/VLASS2.1.eb123456 FAILED")
        and f"scheduler job {record.scheduler_job_id}: TIMEOUT" in text
    ), text


def test_the_ui_asks_for_the_auth_string_then_shows_the_run_and_its_artifacts(
    stack: dict[str, str], tmp_path: Path
) -> None:
    installed = subprocess.run(
        [str(REPO / "scripts" / "install-browser.sh")], capture_output=True, text=True, timeout=900
    )
    assert installed.returncode == 0, installed.stderr
    summaries = api(stack, "/artifacts/filter", {"artifacts": {"key": {"like_": "job-summary-"}}})
    artifacts = [artifact for artifact in summaries if ": COMPLETED" in artifact["data"]]  # type: ignore[union-attr,index]
    assert artifacts, "the deployment test runs first and leaves its summary artifact"
    base = f"http://127.0.0.1:{PORT}"
    artifact_page = f"{base}/artifacts/artifact/{artifacts[0]['id']}"  # type: ignore[index]
    shots = REPO / "tests" / "artifacts"
    shots.mkdir(exist_ok=True)
    with HeadlessChromium(tmp_path / "stranger") as browser:
        browser.open(f"{base}/runs")
        assert not browser.wait_for_text("submit-job/AlphaCal/VLASS2.1.eb123456", timeout=15), (
            "no runs without the auth string"
        )
        assert "/login" in browser.evaluate("location.pathname"), browser.text()[:500]
        browser.screenshot(shots / "ui-login.png")
    with HeadlessChromium(tmp_path / "operator") as browser:
        browser.open(f"{base}/robots.txt")  # the UI's origin: where it keeps the password it was given
        browser.evaluate(
            f"localStorage.setItem('prefect-password', btoa({json.dumps(stack['PREFECT_API_AUTH_STRING'])}))"
        )
        browser.open(f"{base}/runs")
        assert browser.wait_for_text("submit-job/AlphaCal/VLASS2.1.eb123456"), browser.text()[:2000]
        browser.screenshot(shots / "ui-runs.png")
        browser.open(artifact_page)
        assert browser.wait_for_text("AlphaCal on VLASS2.1.eb123456: COMPLETED"), browser.text()[:2000]
        browser.screenshot(shots / "ui-job-summary.png")
    for name in ("ui-login.png", "ui-runs.png", "ui-job-summary.png"):
        assert (shots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_stack_runs_on_a_postgresql_server_database(tmp_path: Path, postgres_url: str) -> None:
    """For teams that outgrow SQLite: the Prefect server's own database on PostgreSQL."""
    server_db = f"prefect_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{server_db}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    port = PORT + 5
    env = {
        **os.environ,
        "TACC_STACK_PORT": str(port),
        "TACC_ORCH_HOME": str(tmp_path / "orch"),
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"{base}/{server_db}",
    }
    stack_script = str(REPO / "scripts" / "stack.sh")
    try:
        up = subprocess.run([stack_script, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        env["PREFECT_API_AUTH_STRING"] = (tmp_path / "orch" / "stack" / "api-auth").read_text().strip()
        request = {
            "agent": "AlphaCal",
            "dataset_id": "VLASS2.1.eb123456",
            "gpu_count": 4,
            "max_runtime": "1h",
            "user_id": "jdoe",
            "system": "local",
        }
        run = subprocess.run(
            [
                str(REPO / ".venv" / "bin" / "prefect"),
                "deployment",
                "run",
                "plan-job/plan-job",
                "--param",
                f"request={json.dumps(request)}",
                "--watch",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert "Flow run finished successfully in 'Completed'" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        with psycopg.connect(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{server_db}") as connection:
            deployments = connection.execute("SELECT count(*) FROM deployment").fetchone()[0]
            runs = connection.execute("SELECT count(*) FROM flow_run WHERE state_type = 'COMPLETED'").fetchone()[0]
        assert deployments == 12 and runs >= 1, "the server keeps its state in PostgreSQL"
    finally:
        subprocess.run([stack_script, "down"], env=env, capture_output=True, timeout=120)
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{server_db}" WITH (FORCE)')
