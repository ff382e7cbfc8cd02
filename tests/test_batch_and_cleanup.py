"""submit-batch (parallel limit, per-user queue limit, priority) and cleanup (TTL) on the embedded default."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from flows.batch import submit_batch
from flows.cleanup import cleanup_expired
from flows.submit import submit_job
from tasks.models import JobStatus
from tasks.planner import PlanRefused
from tasks.store import open_job_store
from tasks.store.tables import JobRow

pytestmark = pytest.mark.usefixtures("prefect_server")


def request(user: str, **fields: Any) -> dict[str, Any]:
    return {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4, "max_runtime": "00:30:00",
            "user_id": user, "system": "local", "params": {"rfi_strategy": "low", "step_seconds": 0.1}, **fields}


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
    with pytest.raises(PlanRefused, match=r"(?s)0\.5 SUs already used or running.*budget of 0\.8"):
        submit_batch([request(user), request(user)])
    assert open_job_store().history(user).total == 0


def test_cleanup_removes_expired_records_and_results_and_keeps_the_rest() -> None:
    user = f"u{uuid.uuid4().hex[:8]}"
    old, kept_longer, recent = (submit_job(request(user)), submit_job(request(user, retention_days=90)), submit_job(request(user)))
    store = open_job_store()
    long_ago = datetime.now(timezone.utc) - timedelta(days=40)
    with store.engine.begin() as connection:  # as if both had ended 40 days ago
        connection.execute(update(JobRow).where(JobRow.id.in_([old.id, kept_longer.id])).values(completed_at=long_ago))
    preview = cleanup_expired(dry_run=True)
    assert preview.records_removed >= 1 and store.get(old.id)
    summary = cleanup_expired()
    assert summary.records_removed >= 1 and summary.work_dirs_removed >= 1
    assert store.history(user).total == 2
    assert {item.id for item in store.history(user).items} == {kept_longer.id, recent.id}
    assert not Path(old.work_dir).exists() and Path(recent.work_dir).exists()
