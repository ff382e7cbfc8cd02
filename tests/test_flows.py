"""The flows end to end on the embedded default, under a real Prefect server (test harness)."""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.exceptions import CancelledRun, ParameterTypeError
from prefect.states import Cancelled
from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import create_engine

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.cancel import cancel_job
from flows.plan import plan_job
from flows.submit import submit_job
from flows.watch import watch_jobs
from tacc_jobs.exceptions import ConfigurationError, JobAlreadyEnded, JobFailed, PlanRefused
from tacc_jobs.models import JobStatus
from tacc_jobs.store import JobStore
from tasks.cancellation import cancel_scheduler_job
from tests.conftest import Webhook, state_of, wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")


def request(**fields: Any) -> dict[str, Any]:
    params = {"rfi_strategy": "high", "step_seconds": 0.2, **fields.pop("params", {})}
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:05:00",
        "user_id": f"u{uuid.uuid4().hex[:8]}",
        "system": "local",
        "params": params,
        **fields,
    }


def scheduler_state(record) -> str:
    return state_of(scheduler_for("local"), record.scheduler_job_id).state


def test_submit_job_runs_to_completed_with_real_progress_and_logs() -> None:
    record = submit_job(request())
    assert record.status is JobStatus.COMPLETED and record.progress == 1.0
    assert record.result["samples"] == 12000 and record.result["rfi_strategy"] == "high"
    assert record.charged_su == 0.25 and record.started_at <= record.completed_at
    assert scheduler_state(record) == "COMPLETED"
    assert open_job_store().history(record.user_id).items[0].id == record.id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"job-{record.id}"]))
        )
        assert artifacts and artifacts[0].type == "progress" and artifacts[0].data == 100.0
        key = f"job-history-{record.user_id}-{hashlib.sha256(record.user_id.encode()).hexdigest()[:8]}"
        history = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
        assert history and history[0].type == "table" and str(record.id) in history[0].data
        logs = wait_until(
            lambda: [
                log.message
                for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[record.flow_run_id])))
                if "alphacal: chunk 8/8" in log.message
            ]
        )
        assert logs


def test_submit_without_waiting_then_watch_jobs_follows_it() -> None:
    record = submit_job(request(), wait=False)
    assert record.status is JobStatus.QUEUING and record.scheduler_job_id

    def completed():
        watch_jobs("local")
        return open_job_store().get(record.id).status is JobStatus.COMPLETED

    wait_until(completed, timeout=60, interval=0.5)
    final = open_job_store().get(record.id)
    assert final.progress == 1.0 and final.result["chunks"] == 8 and final.charged_su == 0.25


def test_a_job_over_the_queues_per_user_cap_waits_queued_then_runs_when_a_slot_frees() -> None:
    """local-gpu-dev allows one job per user, as TACC's dev queues do: the second single submit
    waits QUEUED with the reason, and reaches the cluster only after the first has ended."""
    user = f"cap{uuid.uuid4().hex[:6]}"
    store, outcomes = open_job_store(), {}

    def submit(name: str, **fields: Any) -> None:
        outcomes[name] = submit_job(request(user_id=user, queue="local-gpu-dev", **fields))

    first = threading.Thread(target=submit, args=("first",), kwargs={"params": {"step_seconds": 1}})
    first.start()
    running = wait_until(lambda: [r for r in store.history(user).items if r.scheduler_job_id], timeout=60)
    second = threading.Thread(target=submit, args=("second",))
    second.start()
    waiting = wait_until(
        lambda: [r for r in store.history(user).items if r.id != running[0].id and r.reason], timeout=60
    )
    assert waiting[0].status is JobStatus.QUEUED and waiting[0].scheduler_job_id is None
    assert waiting[0].reason == f"waiting for a slot on local-gpu-dev: {user} has 1 of its 1 job(s) per user there"
    first.join(timeout=120)
    second.join(timeout=120)
    assert [outcomes[name].status for name in ("first", "second")] == [JobStatus.COMPLETED] * 2
    cluster = scheduler_for("local")
    ended = state_of(cluster, outcomes["first"].scheduler_job_id).end
    submitted = cluster.load_job(outcomes["second"].scheduler_job_id).submit
    assert ended and submitted >= ended, (ended, submitted)
    assert outcomes["second"].reason is None or "waiting for a slot" not in outcomes["second"].reason


def test_cancel_while_running_then_a_clear_error_for_ended_jobs() -> None:
    record = submit_job(request(params={"step_seconds": 3}), wait=False)
    wait_until(lambda: watch_jobs("local") and open_job_store().get(record.id).status is JobStatus.RUNNING, timeout=30)
    cancelled = cancel_job(record.id)
    assert cancelled.status is JobStatus.CANCELLED and cancelled.reason == "cancelled by user"
    assert cancelled.charged_su == 0.25 and cancelled.completed_at, (
        "charged what the scheduler charged: its elapsed time (0.25 h minimum)"
    )
    wait_until(lambda: scheduler_state(record).startswith("CANCELLED"), timeout=10)
    watch_jobs("local")
    assert open_job_store().get(record.id).status is JobStatus.CANCELLED
    assert cancel_job(record.id).status is JobStatus.CANCELLED

    finished = submit_job(request())
    with pytest.raises(JobAlreadyEnded, match=f"job {finished.id} already ended COMPLETED at .* nothing to cancel"):
        cancel_job(finished.id)


def test_a_cancel_that_arrives_after_the_job_ended_keeps_its_end_result_and_charge() -> None:
    """The race a user could use to dodge their budget: the job completes, no sweep has seen it
    yet, and a cancel arrives. The store must keep COMPLETED, with its result and its charge."""
    record = submit_job(request(params={"step_seconds": 0.1}), wait=False)
    wait_until(lambda: scheduler_state(record) == "COMPLETED", timeout=60, interval=0.2)
    assert open_job_store().get(record.id).status is JobStatus.QUEUING, "no sweep has recorded the end"
    with pytest.raises(JobAlreadyEnded, match=f"job {record.id} ended COMPLETED before the cancel reached it"):
        cancel_job(record.id)
    stored = open_job_store().get(record.id)
    assert stored.status is JobStatus.COMPLETED and stored.result["chunks"] == 8 and stored.charged_su == 0.25


def test_cancel_reaches_a_waiting_submit_flow() -> None:
    user = request(params={"step_seconds": 3})
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["record"] = submit_job(user)
        except BaseException as error:  # noqa: BLE001 - the test inspects it
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    store = open_job_store()
    running = wait_until(
        lambda: (
            (page := store.history(user["user_id"])).items
            and page.items[0].status is JobStatus.RUNNING
            and page.items[0]
        ),
        60,
    )
    cancel_job(running.id)
    thread.join(60)
    assert isinstance(outcome.get("error"), CancelledRun)
    assert scheduler_state(running).startswith("CANCELLED")


def test_flow_cancellation_hook_cancels_the_scheduler_job() -> None:
    record = submit_job(request(params={"step_seconds": 3}), wait=False)
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(record.flow_run_id)
    cancel_scheduler_job(submit_job, flow_run, Cancelled())
    after = open_job_store().get(record.id)
    assert after.status is JobStatus.CANCELLED and after.reason.startswith(
        "flow run submit-job/AlphaCal/VLASS2.1.eb123456"
    )
    wait_until(lambda: scheduler_state(record).startswith("CANCELLED"), timeout=10)


def test_job_over_its_wall_time_ends_timeout() -> None:
    user = request(max_runtime="00:00:03", params={"step_seconds": 1})
    with pytest.raises(JobFailed, match="FAILED: TIMEOUT"):
        submit_job(user)
    record = open_job_store().history(user["user_id"]).items[0]
    assert (record.status, record.reason) == (JobStatus.FAILED, "TIMEOUT")
    assert scheduler_state(record) == "TIMEOUT" and 0 < record.progress < 1


def test_bad_requests_are_refused_before_anything_is_written() -> None:
    store = open_job_store()
    jobs_before = len(list(Path(scheduler_for("local").root, "jobs").iterdir()))
    bad = request(gpu_count=0)
    with pytest.raises(ParameterTypeError, match="gpu_count"):
        submit_job(bad)
    too_big = request(gpu_count=12)
    with pytest.raises(PlanRefused, match="gpu_count: no GPU queue of local fits 12 GPUs"):
        submit_job(too_big)
    assert store.history(bad["user_id"]).total == 0 and store.history(too_big["user_id"]).total == 0
    assert len(list(Path(scheduler_for("local").root, "jobs").iterdir())) == jobs_before


def test_missing_dataset_is_refused_at_planning() -> None:
    user = request(dataset_id="VLASS9.9.missing")
    with pytest.raises(PlanRefused, match="dataset_id: dataset 'VLASS9.9.missing' not found"):
        submit_job(user)
    assert open_job_store().history(user["user_id"]).total == 0


def test_webhook_receives_the_outcome(webhook: Webhook) -> None:
    record = submit_job(request(webhook_url=webhook.url))
    assert len(webhook.received) == 1
    payload = webhook.received[0]
    assert payload["id"] == str(record.id) and payload["status"] == "COMPLETED" and payload["progress"] == 1.0
    assert payload["metrics"]["samples"] == 12000
    assert payload["output_location"] == f"{record.work_dir}/output"


@pytest.mark.parametrize("webhook", [503], indirect=True)
def test_failing_webhook_is_retried_and_never_fails_the_job(webhook: Webhook) -> None:
    record = submit_job(request(webhook_url=webhook.url))
    assert record.status is JobStatus.COMPLETED
    assert len(webhook.received) == 4


@pytest.mark.parametrize("webhook", [500], indirect=True)
def test_a_webhook_urls_token_reaches_no_log_or_state_message(webhook: Webhook) -> None:
    """Webhook URLs often carry a token: a failing send names the host only. The request goes to
    the address that was checked, under the host's own name."""
    token = f"s3cret{uuid.uuid4().hex}"
    url = webhook.url.replace("127.0.0.1", "localhost") + f"?token={token}"
    record = submit_job(request(webhook_url=url))
    assert record.status is JobStatus.COMPLETED and len(webhook.received) == 4
    assert set(webhook.hosts) == {f"localhost:{webhook.server.server_port}"}
    with get_client(sync_client=True) as client:
        run_logs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[record.flow_run_id]))
        failed = wait_until(
            lambda: [log.message for log in client.read_logs(run_logs) if "Webhook for job" in log.message]
        )
        logs = client.read_logs(run_logs)
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[record.flow_run_id])), limit=200
        )
    assert f"webhook to http://localhost:{webhook.server.server_port}/…: HTTP 500" in failed[0], failed
    messages = [log.message for log in logs] + [run.state.message or "" for run in task_runs if run.state]
    assert not [message for message in messages if token in message]


@pytest.mark.usefixtures("ls6_block")
def test_plan_job_submits_nothing() -> None:
    user = request(system="ls6", gpu_count=4, max_runtime="01:00:00")
    plan = plan_job(user)
    assert (plan.queue, plan.nodes, plan.estimated_su) == ("gpu-a100", 2, 8.0)
    assert any("gpu-a100-dev" in tip for tip in plan.tips)
    assert open_job_store().history(user["user_id"]).total == 0
    with get_client(sync_client=True) as client:
        assert client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["job-plan"])))


def test_job_store_on_postgresql_through_the_database_block(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    block_name = f"jobs-pg-{uuid.uuid4().hex[:8]}"
    SqlAlchemyConnector(connection_info=postgres_url).save(block_name)
    monkeypatch.setenv("TACC_ORCH_DATABASE_BLOCK", block_name)
    record = submit_job(request())
    assert record.status is JobStatus.COMPLETED
    in_postgres = JobStore(create_engine(postgres_url)).get(record.id)
    assert in_postgres.status is JobStatus.COMPLETED and in_postgres.result == record.result
    assert os.environ["TACC_ORCH_DATABASE_BLOCK"] == block_name


def test_the_database_block_is_read_once_per_process(postgres_block: str) -> None:
    engine = open_job_store().engine
    SqlAlchemyConnector.delete(os.environ["TACC_ORCH_DATABASE_BLOCK"])  # no second read would find it now
    assert open_job_store().engine is engine and engine.url.render_as_string(hide_password=False) == postgres_block


def test_a_named_database_block_that_is_not_saved_is_an_error_not_sqlite(monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in TACC_ORCH_DATABASE_BLOCK must not open an empty SQLite store (watch-jobs would lose every job)."""
    monkeypatch.setenv("TACC_ORCH_DATABASE_BLOCK", f"jobs-pg-typo-{uuid.uuid4().hex[:6]}")
    with pytest.raises(
        ConfigurationError, match=r"names the SqlAlchemyConnector block 'jobs-pg-typo-\w+', which the Prefect server"
    ):
        open_job_store()
    with pytest.raises(ConfigurationError):
        submit_job(request())
    monkeypatch.delenv("TACC_ORCH_DATABASE_BLOCK")
    assert open_job_store().engine.url.drivername == "sqlite"  # the default name, unsaved: the embedded default


def test_webhooks_to_private_addresses_are_refused_before_anything_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TACC_ORCH_ALLOW_PRIVATE_WEBHOOKS", "false")
    user = request(webhook_url="http://169.254.169.254/latest/meta-data")
    with pytest.raises(PlanRefused, match="webhook_url: 169.254.169.254 is a link-local address"):
        submit_job(user)
    assert open_job_store().history(user["user_id"]).total == 0


def test_plan_needs_no_saved_block_and_says_what_a_block_added(ls6_block: Any) -> None:
    with get_client(sync_client=True) as client:
        client.delete_block_document(client.read_block_document_by_name("ls6", "tacc-credentials").id)
    without = plan_job(request(system="ls6", gpu_count=4, max_runtime="01:00:00"))
    assert (without.queue, without.nodes, without.estimated_su, without.account) == ("gpu-a100", 2, 8.0, None)
    assert "-A" not in without.sbatch_args
    assert any("no TaccCredentials block 'ls6' saved" in source for source in without.based_on)
    with pytest.raises(PlanRefused, match=r"^max_runtime: .*48 h"):
        plan_job(request(system="vista", gpu_count=4, max_runtime="49h"))
    ls6_block.save("ls6", overwrite=True)
    with_block = plan_job(request(system="ls6", gpu_count=4, max_runtime="01:00:00"))
    assert with_block.account == ls6_block.allocation and with_block.sbatch_args[-2:] == ["-A", ls6_block.allocation]
    assert any(f"allocation {ls6_block.allocation}" in source for source in with_block.based_on)
