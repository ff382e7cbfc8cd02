"""The Tapis backend against the Tapis test server, its jobs run for real on the sandbox Slurm."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tacc_jobs.agents import AGENTS_DIR
from tacc_jobs.exceptions import PermanentSchedulerError, TapisRequestError
from tacc_jobs.models import JobStatus, parse_request
from tacc_jobs.schedulers import JobSubmission, SchedulerJobState
from tacc_jobs.schedulers.job_script import AgentRuntime, JobPaths, job_environment
from tacc_jobs.schedulers.tapis import TapisScheduler
from tacc_jobs.settings import REPO_ROOT
from tacc_jobs.staging.datasets import inspect_dataset, stage
from tacc_jobs.staging.tapis_files import TapisFiles
from tacc_jobs.tracking import TrackedJob, observe
from tests.conftest import Webhook, accounted, wait_until
from tests.tapis_server import TapisTestServer

pytestmark = pytest.mark.usefixtures("tapis_server")
DATASET = "VLASS2.1.eb123456"
SEARCH = "POST /v3/jobs/search"


def agent_job(
    scheduler: TapisScheduler,
    step_seconds: float = 0.1,
    agent: str = "AlphaCal",
    extra: list[str] | None = None,
    webhook_url: str | None = None,
) -> tuple[JobSubmission, JobPaths]:
    """A real AlphaCal job on the staged sample dataset, as the submit flow builds it."""
    job_id = uuid.uuid4()
    request = parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": DATASET,
            "gpu_count": 1,
            "max_runtime": "00:05:00",
            "user_id": "jdoe",
            "system": "ls6",
            "params": {"step_seconds": step_seconds},
        }
    )
    paths = JobPaths.for_job(scheduler.scratch_root, job_id, DATASET)
    runtime = AgentRuntime(python="python3", agent_home=f"{scheduler.scratch_root}/agents")
    submission = JobSubmission(
        name=f"tacc-{job_id.hex}",
        script="",
        work_dir=paths.work_dir,
        stdout_path=paths.stdout,
        stderr_path=paths.stderr,
        sbatch_args=["-p", "gpu-a100", "-N", "1", "--ntasks-per-node", "1", "-t", "00:05:00", *(extra or [])],
        agent=agent,
        env=job_environment(job_id, request, paths, runtime),
        webhook_url=webhook_url,
    )
    return submission, paths


@pytest.fixture
def staged(tapis_scheduler: TapisScheduler) -> TapisScheduler:
    """The agents' programs and the sample dataset staged through the Files API."""
    files = TapisFiles(tapis_scheduler.client, "ls6")
    files.push(AGENTS_DIR, f"{tapis_scheduler.scratch_root}/agents")
    stage(inspect_dataset(REPO_ROOT / "datasets", DATASET), files, f"{tapis_scheduler.scratch_root}/datasets/{DATASET}")
    return tapis_scheduler


def named(scheduler: TapisScheduler, job_ids: list[str]) -> dict[str, str]:
    """Job id -> name (a job's identity is both), as Tapis knows them."""
    return {
        job.uuid: job.name for job in scheduler.client.search_jobs([f"(uuid IN ({', '.join(map(repr, job_ids))}))"])
    }


def until(
    scheduler: TapisScheduler, job_id: str, condition: Callable[[SchedulerJobState], bool], timeout: float = 90
) -> SchedulerJobState:
    return wait_until(
        lambda: (state := scheduler.states(named(scheduler, [job_id])).get(job_id)) and condition(state) and state,  # type: ignore[return-value]
        timeout=timeout,
        interval=0.3,
    )


def test_staging_through_the_files_api_verifies_and_skips_when_unchanged(
    tapis_scheduler: TapisScheduler, tapis_server: TapisTestServer
) -> None:
    files = TapisFiles(tapis_scheduler.client, "ls6")
    inventory = inspect_dataset(REPO_ROOT / "datasets", DATASET)
    destination = f"{tapis_scheduler.scratch_root}/datasets/{DATASET}"
    progress: list[float] = []
    first = stage(inventory, files, destination, progress.append)
    assert first.copied and first.files == 8 and first.transfer.files_transferred == 8 and progress[-1] == 1.0
    assert first.transfer.bytes_transferred == inventory.bytes
    uploads = tapis_server.calls["POST /v3/files/ops/{systemId}/{path}"]
    again = stage(inventory, TapisFiles(tapis_scheduler.client, "ls6"), destination)
    assert not again.copied and tapis_server.calls["POST /v3/files/ops/{systemId}/{path}"] == uploads, (
        "nothing uploaded"
    )
    tapis_scheduler.client.upload("ls6", f"{destination}/chunk-003.csv", b"damaged\n")
    repaired = stage(inventory, TapisFiles(tapis_scheduler.client, "ls6"), destination)
    assert repaired.repaired == ["chunk-003.csv"] and repaired.transfer.files_transferred == 1


def test_an_agent_job_runs_on_slurm_to_finished_with_outputs_history_and_webhook(
    staged: TapisScheduler, tapis_server: TapisTestServer, webhook: Webhook, sandbox
) -> None:
    submission, paths = agent_job(staged, webhook_url=webhook.url)
    job_id = staged.submit(submission)
    state = until(staged, job_id, lambda state: state.status.is_terminal)
    assert (state.state, state.status, state.exit_code) == ("FINISHED", JobStatus.COMPLETED, "0:0")
    assert state.start is not None and state.end >= state.start
    tapis_job = tapis_server.jobs[job_id]
    assert tapis_job["name"] == submission.name and submission.name in tapis_job["tags"]
    expected = (
        f"{submission.name}|gpu-a100|{sandbox.account}|COMPLETED"  # sbatch'ed on the sandbox, with the allocation
    )
    wait_until(
        lambda: accounted(tapis_job["remoteJobId"], submission.name, "JobName,Partition,Account,State") == expected,
        timeout=90,
        interval=1,
    )
    assert json.loads(staged.output(job_id, "output/result.json"))["samples"] == 12000
    assert {file.name for file in staged.outputs(job_id)} >= {"result.json", "progress"}
    assert "alphacal: done" in staged.output(job_id, "stdout.log").decode()
    files = staged.read_files({paths.progress: 0, paths.stdout: 0})
    assert files[paths.progress].data.strip() == "1.0000" and "chunk 8/8" in files[paths.stdout].data
    events = [event.event_detail for event in staged.history(job_id)]
    assert events == [
        "PENDING",
        "PROCESSING_INPUTS",
        "STAGING_INPUTS",
        "STAGING_JOB",
        "SUBMITTING_JOB",
        "QUEUED",
        "RUNNING",
        "ARCHIVING",
        "FINISHED",
    ]
    subscription = json.loads(tapis_job["subscriptions"])[0]
    assert subscription["deliveryTargets"] == [{"deliveryMethod": "WEBHOOK", "deliveryAddress": webhook.url}]
    delivered = [json.loads(item["event"]["data"])["newJobStatus"] for item in webhook.received]
    assert delivered == events and all(item["event"]["subject"] == job_id for item in webhook.received)
    end = datetime.now(timezone.utc) + timedelta(minutes=1)
    rows = [row for row in staged.accounting(end - timedelta(hours=1), end) if row[0] == tapis_job["remoteJobId"]]
    assert [row[1:6] + row[-1:] for row in rows] == [
        ["tacctest", sandbox.account, "gpu-a100", "COMPLETED", "0:0", submission.name]
    ]


def test_a_submission_is_exactly_once(staged: TapisScheduler, tapis_server: TapisTestServer) -> None:
    submission, _ = agent_job(staged, extra=["--begin", "now+1hour"])
    tapis_server.lose_next_answer(
        "POST /v3/jobs/submit"
    )  # served, then the answer is lost: the backend searches, adopts
    job_id = staged.submit(submission)
    assert staged.submit(submission) == job_id, "a retried task adopts the job"
    assert [job["uuid"] for job in tapis_server.jobs.values() if job["name"] == submission.name] == [job_id]
    assert tapis_server.calls["POST /v3/jobs/submit"] == 1
    staged.cancel(job_id)


def test_an_invalid_app_is_refused_at_once_with_a_clear_error(
    staged: TapisScheduler, tapis_server: TapisTestServer
) -> None:
    submission, _ = agent_job(staged, agent="NoSuchAgent")
    with pytest.raises(
        TapisRequestError, match="JOBS_APP_NOT_FOUND Application tacc-orch-nosuchagent version 1.0"
    ) as raised:
        staged.submit(submission)
    assert isinstance(raised.value, PermanentSchedulerError) and raised.value.status_code == 400
    assert tapis_server.calls["POST /v3/jobs/submit"] == 1


def test_twenty_active_jobs_are_polled_with_one_search_call(
    staged: TapisScheduler, tapis_server: TapisTestServer
) -> None:
    jobs = [agent_job(staged, extra=["--begin", "now+1hour"]) for _ in range(20)]  # queued in Slurm, costing nothing
    job_ids = [staged.submit(submission) for submission, _ in jobs]
    wait_until(
        lambda: all(job["status"] == "QUEUED" for job in tapis_server.jobs.values() if job["uuid"] in job_ids),
        timeout=120,
    )
    tracked = [
        TrackedJob(
            scheduler_job_id=job_id, name=submission.name, progress_path=paths.progress, stdout_path=paths.stdout
        )
        for job_id, (submission, paths) in zip(job_ids, jobs)
    ]
    tapis_server.reset_counts()
    observations = observe(staged, tracked)  # what one watch-jobs sweep does for a system
    assert [(item.status, item.reason) for item in observations] == [(JobStatus.QUEUING, "QUEUED")] * 20
    assert dict(tapis_server.calls) == {SEARCH: 1}, "one search; no file reads for jobs not started"
    for job_id in job_ids:
        staged.cancel(job_id)
    states = staged.states({job_id: submission.name for job_id, (submission, _) in zip(job_ids, jobs)})
    assert {(state.status, state.reason) for state in states.values()} == {
        (JobStatus.CANCELLED, "cancelled (CANCELLED_BY_USER)")
    }


def test_cancel_a_running_job_reaches_scancel(staged: TapisScheduler, tapis_server: TapisTestServer) -> None:
    submission, _ = agent_job(staged, step_seconds=10)
    job_id = staged.submit(submission)
    until(staged, job_id, lambda state: state.status is JobStatus.RUNNING)
    staged.cancel(job_id)
    state = staged.states({job_id: submission.name})[job_id]
    assert (state.state, state.status) == ("CANCELLED", JobStatus.CANCELLED)
    remote = tapis_server.jobs[job_id]["remoteJobId"]
    wait_until(lambda: accounted(remote, submission.name).startswith("CANCELLED"), timeout=90, interval=1)
    staged.cancel(job_id)  # cancelling an ended job does nothing


def test_a_blocked_job_is_not_failed_and_recovers(staged: TapisScheduler, tapis_server: TapisTestServer) -> None:
    submission, _ = agent_job(staged, step_seconds=1)
    job_id = staged.submit(submission)
    until(staged, job_id, lambda state: state.status is JobStatus.RUNNING)
    tapis_server.block(job_id)
    blocked = until(staged, job_id, lambda state: state.state == "BLOCKED", timeout=10)
    assert blocked.status is JobStatus.RUNNING and blocked.reason.startswith("BLOCKED: Remote access error")
    tapis_server.unblock(job_id)
    state = until(staged, job_id, lambda state: state.status.is_terminal)
    assert state.status is JobStatus.COMPLETED and tapis_server.jobs[job_id]["blockedCount"] == 1


def test_queue_load_is_not_available_through_tapis(tapis_scheduler: TapisScheduler) -> None:
    with pytest.raises(PermanentSchedulerError, match="does not report queue load"):
        tapis_scheduler.resources()


def test_a_file_input_is_staged_by_tapis(staged: TapisScheduler, tapis_server: TapisTestServer) -> None:
    submission, paths = agent_job(staged)
    source = f"tapis://ls6{staged.scratch_root}/datasets/{DATASET}/chunk-000.csv"
    job_id = staged.submit(submission.model_copy(update={"inputs": {"first-chunk": source}}))
    until(staged, job_id, lambda state: state.status.is_terminal)
    staged_input = staged.client.get_contents("ls6", f"{paths.work_dir}/inputs/first-chunk")
    assert staged_input == Path(REPO_ROOT / "datasets" / DATASET / "chunk-000.csv").read_bytes()


def test_a_large_dataset_moves_by_a_transfer_request(
    tapis_scheduler: TapisScheduler, tapis_server: TapisTestServer
) -> None:
    client = tapis_scheduler.client
    archive = f"{tapis_scheduler.scratch_root}/archive"  # where Tapis also reaches the datasets (Corral, at TACC)
    for path in sorted((REPO_ROOT / "datasets" / DATASET).iterdir()):
        client.upload("ls6", f"{archive}/{DATASET}/{path.name}", path.read_bytes())
    files = TapisFiles(client, "ls6", source_url=f"tapis://ls6{archive}", transfer_threshold_bytes=0, poll_seconds=0.1)
    inventory = inspect_dataset(REPO_ROOT / "datasets", DATASET)
    uploads = tapis_server.calls["POST /v3/files/ops/{systemId}/{path}"]
    progress: list[float] = []
    staged = stage(inventory, files, f"{tapis_scheduler.scratch_root}/datasets/{DATASET}", progress.append)
    assert (
        staged.copied
        and staged.transfer.files_transferred == 8
        and staged.transfer.bytes_transferred == inventory.bytes
    )
    assert tapis_server.calls["POST /v3/files/transfers"] == 1 and progress[-1] == 1.0
    assert tapis_server.calls["POST /v3/files/ops/{systemId}/{path}"] == uploads + 1, "only the manifest was uploaded"
