"""submit-batch (parallel limit, per-user queue limit, priority) and cleanup (TTL) on the embedded default."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import fsspec
import pytest
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.results import ResultRecordMetadata, ResultStore
from prefect.serializers import PickleSerializer
from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK, temporary_settings
from prefect.states import Completed, Running
from sqlalchemy import update

from blocks.clusters import scheduler_for
from blocks.database import open_job_store
from flows.batch import submit_batch
from flows.cleanup import cleanup_expired
from flows.submit import submit_job
from tacc_jobs.exceptions import PlanRefused
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.schedulers.job_script import allocation_dir
from tacc_jobs.store.tables import JobRow, SuChargeRow
from tasks import prefect_api
from tasks.run_results import ResultFile, locate, persisted_result_files
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("prefect_server")


def request(user: str, **fields: Any) -> dict[str, Any]:
    return {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 4,
        "max_runtime": "00:30:00",
        "user_id": user,
        "system": "local",
        "params": {"rfi_strategy": "low", "step_seconds": 0.1},
        **fields,
    }


def test_batch_keeps_tacc_per_user_limit_and_serves_high_priority_first() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    requests = [request(user, queue="local-gpu-dev", dataset_id="VLASS2.1.eb123456") for _ in range(3)]
    requests[2]["priority"] = "high"
    records = submit_batch(requests, parallel_limit=2)
    assert [record.status for record in records] == [JobStatus.COMPLETED] * 3
    assert records[0].priority == "high", "high priority goes first"
    runs = sorted((record.started_at, record.completed_at) for record in records)
    assert all(earlier[1] <= later[0] for earlier, later in zip(runs, runs[1:])), "local-gpu-dev allows 1 job per user"
    assert runs[0][0] == records[0].started_at


def test_batch_refuses_before_writing_anything() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    with pytest.raises(PlanRefused, match="gpu_count"):
        submit_batch([request(user), request(user, gpu_count=64)])
    assert open_job_store().history(user).total == 0


def test_a_batch_counts_its_own_jobs_against_the_users_su_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TACC_ORCH_SU_BUDGETS", f'{{"{user}": 0.8}}')  # one 30-minute node fits (0.5 SU), two do not
    with pytest.raises(PlanRefused, match=r"user_id: the batch may charge u\w+ 1 SUs .* more than the 0\.8 SUs left"):
        submit_batch([request(user), request(user)])
    assert open_job_store().history(user).total == 0


def test_a_batch_that_fits_its_budget_only_packed_runs_packed(monkeypatch: pytest.MonkeyPatch) -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(
        "TACC_ORCH_SU_BUDGETS", f'{{"{user}": 0.6}}'
    )  # two 1-GPU jobs alone: 2 x 0.5 SU; packed: one node
    records = submit_batch([request(user, gpu_count=1), request(user, gpu_count=1)])
    assert [record.status for record in records] == [JobStatus.COMPLETED] * 2
    assert len({record.allocation_name for record in records}) == 1 and None not in {
        record.allocation_name for record in records
    }
    assert sum(record.estimated_su for record in records) == 0.5
    assert open_job_store().su_committed(user) <= 0.6


def test_cleanup_removes_expired_records_and_results_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefect_api, "API_PAGE", 2)  # a run's task runs come in several pages
    user = f"u{uuid.uuid4().hex[:8]}"
    old, kept_longer, recent = (
        submit_job(request(user)),
        submit_job(request(user, retention_days=90)),
        submit_job(request(user)),
    )
    store = open_job_store()
    age(old, kept_longer)
    old_results, recent_results = result_files_of(old), result_files_of(recent)
    assert all(path.exists() for path in old_results + recent_results)
    preview = cleanup_expired(dry_run=True)
    assert preview.records_removed >= 1 and preview.results_removed >= len(old_results) and store.get(old.id)
    assert all(path.exists() for path in old_results)
    summary = cleanup_expired()
    assert (
        summary.records_removed >= 1 and summary.work_dirs_removed >= 1 and summary.results_removed >= len(old_results)
    )
    assert store.history(user).total == 2
    assert {item.id for item in store.history(user).items} == {kept_longer.id, recent.id}
    assert not Path(old.work_dir).exists() and Path(recent.work_dir).exists()
    assert not any(path.exists() for path in old_results) and all(path.exists() for path in recent_results)


def test_a_charge_still_counts_against_the_budget_after_cleanup_deletes_its_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Cleanup deleting an old record gave its user the SUs back: a user could outrun their budget
    by waiting out the retention."""
    user = f"u{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TACC_ORCH_SU_BUDGETS", f'{{"{user}": 0.7}}')  # each job estimates 0.5 SU and is charged 0.25
    first = submit_job(request(user))
    assert first.charged_su == 0.25
    age(first)
    assert cleanup_expired().records_removed >= 1 and open_job_store().history(user).total == 0
    with pytest.raises(PlanRefused, match=r"with 0\.25 SUs already used or running, it would exceed"):
        submit_job(request(user))
    with open_job_store().engine.begin() as connection:  # as if charged in last year's budget period
        connection.execute(
            update(SuChargeRow)
            .where(SuChargeRow.user_id == user)
            .values(charged_at=datetime.now(timezone.utc) - timedelta(days=400))
        )
    assert submit_job(request(user)).status is JobStatus.COMPLETED, "a new budget period starts afresh"


def test_a_batch_runs_results_stay_until_all_its_jobs_expire() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    first, second = submit_batch(
        [request(user), request(user, max_runtime="00:20:00")]
    )  # two shapes: two jobs, not an array
    results = result_files_of(
        first, count=6
    )  # two plans, the batch plan, one staging (one dataset), two submits; no flow result
    assert first.flow_run_id == second.flow_run_id
    for record in (first, second):
        age(record)
        cleanup_expired()
        assert all(path.exists() for path in results) is (record is first), "kept while one job of the run is kept"


def test_the_jobs_of_a_flow_run_that_has_not_ended_wait_for_it() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    record = submit_job(request(user))
    store = open_job_store()
    with get_client(sync_client=True) as client:
        running = client.create_flow_run(cleanup_expired, state=Running())
        with store.engine.begin() as connection:
            connection.execute(update(JobRow).where(JobRow.id == record.id).values(flow_run_id=running.id))
        age(record)
        cleanup_expired()
        assert store.get(record.id) and Path(record.work_dir).exists(), "kept while its flow run runs"
        client.set_flow_run_state(running.id, Completed(), force=True)
    cleanup_expired()
    assert store.history(user).total == 0 and not Path(record.work_dir).exists()


def age(*records: JobRecord) -> None:
    """As if the jobs had ended 40 days ago."""
    with open_job_store().engine.begin() as connection:
        connection.execute(
            update(JobRow)
            .where(JobRow.id.in_([record.id for record in records]))
            .values(completed_at=datetime.now(timezone.utc) - timedelta(days=40))
        )


def result_files_of(record: JobRecord, count: int = 5) -> list[Path]:
    """The files Prefect persisted for a job's flow run (default local storage: absolute keys),
    once the server has all its task runs (it records them from events, a moment later)."""
    assert record.flow_run_id is not None
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(record.flow_run_id)

        def all_files() -> list[ResultFile] | None:
            files = persisted_result_files(client, flow_run)
            return files if len(files) == count else None

        files = wait_until(all_files)
    assert isinstance(files, list) and all(file.path for file in files)
    return [Path(str(file.path)) for file in files]  # submit-job: flow, plan, record, stage, submit


@pytest.mark.parametrize("storage_kind", ["local", "remote"])
def test_a_persisted_result_is_deleted_from_the_default_storage_block_it_was_written_to(
    storage_kind: str, tmp_path: Path
) -> None:
    name = f"results-{uuid.uuid4().hex[:8]}"
    if storage_kind == "local":
        LocalFileSystem(basepath=str(tmp_path)).save(name)
        saved: WritableFileSystem = LocalFileSystem.load(name)
        written = tmp_path / "plan-result"
    else:  # fsspec's in-memory file system stands for S3 and the like
        RemoteFileSystem(basepath=f"memory://{name}").save(name)
        saved = RemoteFileSystem.load(name)
        written = Path(f"/{name}/plan-result")
    exists = written.exists if storage_kind == "local" else lambda: fsspec.filesystem("memory").exists(str(written))
    store = ResultStore(result_storage=saved)
    record = store.create_result_record({"job": 1}, key="plan-result")
    store.persist_result_record(record)
    assert record.metadata.storage_block_id is not None and exists()
    assert (
        locate(record.metadata).kept_because
        == f"block {record.metadata.storage_block_id} is not the default result storage"
    )
    with temporary_settings({PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: f"{saved.get_block_type_slug()}/{name}"}):
        file = locate(record.metadata)
        escaping = locate(record.metadata.model_copy(update={"storage_key": "../outside"}))
    assert exists() and escaping.filesystem is None and "'..'" in str(escaping.kept_because)
    file.delete()
    assert not exists()
    file.delete()  # a file already gone is fine


def test_a_default_storage_key_outside_the_local_storage_path_is_refused() -> None:
    metadata = ResultRecordMetadata(storage_key="/etc/passwd", serializer=PickleSerializer())
    file = locate(metadata)
    assert file.filesystem is None and "outside of the base path" in str(file.kept_because)


def test_cleanup_removes_a_packed_allocation_s_directory_with_its_last_member() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    records = submit_batch([request(user, gpu_count=1), request(user, gpu_count=1)])
    [name] = {record.allocation_name for record in records}
    directory = Path(allocation_dir(scheduler_for("local").scratch_root, name))
    assert (directory / "manifest.json").exists()
    age(*records)
    summary = cleanup_expired()
    assert summary.allocation_dirs_removed >= 1 and not directory.exists()
    assert open_job_store().history(user).total == 0 and not any(Path(record.work_dir).exists() for record in records)
