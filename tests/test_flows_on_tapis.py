"""The flows through the Tapis backend: the system `ls6` saved as a TapisCredentials block
pointing at the Tapis test server, whose jobs run on the sandbox Slurm."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)

from blocks.clusters import scheduler_for, transfer_for
from blocks.database import open_job_store
from blocks.tapis import TapisCredentials
from flows.cancel import cancel_job
from flows.ingest import ingest_job_metadata
from flows.plan import plan_job
from flows.register_apps import register_tapis_apps
from flows.resources import cluster_resources
from flows.stage import stage_dataset, staging_status
from flows.submit import submit_job
from flows.watch import watch_jobs
from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers.tapis import TAPIS_UUID, TapisScheduler
from tacc_jobs.settings import get_settings
from tacc_jobs.staging.tapis_files import TapisFiles
from tacc_jobs.store import StagingStatus
from tasks.cleanup import remove_work_dir
from tests.conftest import Webhook, wait_until
from tests.tapis_server import TapisTestServer

pytestmark = pytest.mark.usefixtures("prefect_server", "tapis_block")


def request(**fields: Any) -> dict[str, Any]:
    params = {"rfi_strategy": "high", "step_seconds": 0.2, **fields.pop("params", {})}
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 3,
        "max_runtime": "00:05:00",
        "user_id": f"u{uuid.uuid4().hex[:8]}",
        "system": "ls6",
        "params": params,
        **fields,
    }


@pytest.fixture
def apps_registered(tapis_block: TapisCredentials) -> None:
    assert register_tapis_apps("ls6") in ({"tacc-orch-alphacal": "registered"}, {"tacc-orch-alphacal": "updated"})


def test_the_saved_block_makes_ls6_go_through_tapis(tapis_block: TapisCredentials) -> None:
    assert isinstance(scheduler_for("ls6"), TapisScheduler) and isinstance(transfer_for("ls6"), TapisFiles)
    plan = plan_job(request())
    assert plan.account == tapis_block.allocation and ["-A", tapis_block.allocation] == plan.sbatch_args[-2:]
    assert f"TapisCredentials block 'ls6': allocation {tapis_block.allocation}" in plan.based_on


@pytest.mark.usefixtures("apps_registered")
def test_submit_job_end_to_end_through_tapis(
    tapis_server: TapisTestServer, tapis_block: TapisCredentials, webhook: Webhook
) -> None:
    started = time.monotonic()
    record = submit_job(request(webhook_url=webhook.url))
    elapsed = time.monotonic() - started
    print(
        f"\nsubmit_job through Tapis, end to end: {elapsed:.1f} s (job {record.runtime.total_seconds():.1f} s on Slurm)"
    )
    assert (
        record.status is JobStatus.COMPLETED
        and record.progress == 1.0
        and TAPIS_UUID.fullmatch(record.scheduler_job_id)
    )
    assert (record.queue, record.nodes, record.charged_su) == ("gpu-a100", 1, 1 * 0.25 * 4)
    assert record.result["samples"] == 12000 and record.result["rfi_strategy"] == "high"
    staged = staging_status("VLASS2.1.eb123456", "ls6")
    assert (
        staged.status is StagingStatus.STAGED
        and staged.path == f"{tapis_block.scratch_root}/datasets/VLASS2.1.eb123456"
    )
    tapis_job = tapis_server.jobs[record.scheduler_job_id]
    assert tapis_job["status"] == "FINISHED" and tapis_job["name"] == f"tacc-{record.id.hex}"
    assert tapis_server.calls["POST /v3/jobs/submit"] == 1
    statuses = [item.get("status") or item["event"]["type"].rsplit(".", 1)[-1] for item in webhook.received]
    assert statuses[-1] == "COMPLETED" and "FINISHED" in statuses, (
        "Tapis's subscription, then the orchestrator's own call"
    )
    secrets = [tapis_server.password, *tapis_server.access_tokens, *tapis_server.refresh_tokens]
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[record.flow_run_id])))
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[record.flow_run_id])))
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[record.flow_run_id])))
    stored = "\n".join(
        [
            *(log.message for log in logs),
            runs[0].model_dump_json(),
            *(artifact.model_dump_json() for artifact in artifacts),
            get_settings().sqlite_path.read_bytes().decode(errors="replace"),
        ]
    )
    assert logs and artifacts and all(secret not in stored for secret in secrets), (
        "no secret in logs, parameters, artifacts, job store"
    )


@pytest.mark.usefixtures("apps_registered")
def test_watch_and_cancel_through_tapis(tapis_server: TapisTestServer) -> None:
    record = submit_job(request(params={"step_seconds": 5}), wait=False)
    tapis_server.reset_counts()
    sweeps = watch_jobs("ls6")
    assert tapis_server.calls["POST /v3/jobs/search"] == 1, "one search call for every active job of the system"
    assert sweeps[0].active >= 1
    started = wait_until(
        lambda: watch_jobs("ls6") and (now := open_job_store().get(record.id)).status is not JobStatus.QUEUING and now,
        timeout=120,
        interval=1,
    )
    assert started.status is JobStatus.RUNNING, started.reason
    cancelled = cancel_job(record.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert tapis_server.jobs[record.scheduler_job_id]["status"] == "CANCELLED"


@pytest.mark.usefixtures("apps_registered")
def test_nightly_ingestion_reads_tapis_job_history() -> None:
    record = submit_job(request())
    end = datetime.now(timezone.utc) + timedelta(minutes=1)
    summary = ingest_job_metadata(source="sacct", system="ls6", start=end - timedelta(hours=1), end=end)
    assert summary.rows_read >= 1 and summary.failed == 0
    assert record.status is JobStatus.COMPLETED


def test_stage_dataset_and_cleanup_through_tapis(tapis_block: TapisCredentials) -> None:
    staged = stage_dataset("VLASS2.1.eb123456", "ls6", priority="high")
    assert staged.status is StagingStatus.STAGED and staged.files == 8 and staged.priority == "high"
    client = tapis_block.shared_client()
    work_dir = f"{tapis_block.scratch_root}/jobs/{uuid.uuid4()}"
    client.upload("ls6", f"{work_dir}/output/result.json", b"{}")
    assert remove_work_dir("ls6", work_dir) and client.list_files("ls6", work_dir) == []


def test_queue_load_is_a_clear_error_through_tapis() -> None:
    with pytest.raises(PermanentSchedulerError, match="through Tapis, which does not report queue load"):
        cluster_resources("ls6")
