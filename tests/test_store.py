"""The job store, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, inspect

from tacc_jobs.exceptions import IllegalTransition, JobNotFound
from tacc_jobs.models import JobRequest, JobStatus, parse_request
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.store import JobStore, JobUpdate, migrate


def request(**fields: object) -> JobRequest:
    base = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 3, "max_runtime": "1h", "user_id": "jdoe", "system": "ls6"}
    return parse_request({**base, **fields})


@pytest.fixture
def store(engine: Engine) -> JobStore:
    migrate(engine)
    return JobStore(engine)


def create(store: JobStore, **fields: object):
    job = request(**fields)
    return store.create(job, plan_request(job, PlanningContext()))


def test_migration_creates_the_seed_schema_and_is_idempotent(store: JobStore) -> None:
    migrate(store.engine)
    inspector = inspect(store.engine)
    columns = {column["name"] for column in inspector.get_columns("jobs")}
    assert {"id", "user_id", "agent", "dataset_id", "system", "queue", "scheduler_job_id", "status", "reason",
            "progress", "params", "result", "notes", "estimated_runtime_minutes", "gpu_count", "nodes",
            "created_at", "updated_at", "started_at", "completed_at"} <= columns
    indexes = {index["name"]: index["column_names"] for index in inspector.get_indexes("jobs")}
    assert indexes["ix_jobs_user_id_created_at"] == ["user_id", "created_at"]
    assert indexes["ix_jobs_status_created_at"] == ["status", "created_at"]
    assert indexes["ix_jobs_scheduler_job_id"] == ["scheduler_job_id"]


def test_create_and_get(store: JobStore) -> None:
    record = create(store, params={"rfi_strategy": "low", "step_seconds": 0.5})
    again = store.get(record.id)
    assert again == record
    assert again.status is JobStatus.QUEUED
    assert again.params == {"rfi_strategy": "low", "step_seconds": 0.5}
    assert again.nodes == 1 and again.queue == "gpu-a100"
    assert again.created_at.tzinfo is not None


def test_get_unknown_job(store: JobStore) -> None:
    with pytest.raises(JobNotFound):
        store.get("00000000-0000-0000-0000-000000000000")


def test_lifecycle_and_illegal_moves(store: JobStore) -> None:
    record = create(store)
    started = datetime(2026, 11, 1, 12, tzinfo=timezone.utc)
    assert store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="101")).moved
    assert store.transition(record.id, JobStatus.RUNNING, JobUpdate(started_at=started, progress=0.4)).moved
    same = store.transition(record.id, JobStatus.RUNNING, JobUpdate(progress=0.6))
    assert not same.moved and same.record.progress == 0.6
    done = store.transition(record.id, JobStatus.COMPLETED, JobUpdate(completed_at=started + timedelta(minutes=30), progress=1.0))
    assert done.moved and done.record.runtime == timedelta(minutes=30)
    with pytest.raises(IllegalTransition, match="COMPLETED -> RUNNING is not allowed"):
        store.transition(record.id, JobStatus.RUNNING)
    with pytest.raises(IllegalTransition, match="QUEUED -> RUNNING is not allowed"):
        store.transition(create(store).id, JobStatus.RUNNING)
    kept = store.transition(record.id, JobStatus.COMPLETED, JobUpdate(result={"flagged_fraction": 0.02}))
    assert not kept.moved and kept.record.result == {"flagged_fraction": 0.02}


def test_racing_transitions_move_once(store: JobStore) -> None:
    record = create(store)
    store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="7"))
    outcomes = []

    def finish() -> None:
        outcomes.append(store.transition(record.id, JobStatus.COMPLETED).moved)

    threads = [threading.Thread(target=finish) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, False, False, True]


def test_a_reused_scheduler_job_id_is_another_job(store: JobStore) -> None:
    """Slurm restarts its ids after a controller reset: an old record and a new one may share one."""
    old, new = create(store), create(store)
    store.transition(old.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="55"))
    store.transition(old.id, JobStatus.COMPLETED)
    assert store.transition(new.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="55")).moved
    assert [record.id for record in store.active("ls6")] == [new.id]
    assert store.get(old.id).status is JobStatus.COMPLETED


def test_history_is_paginated(store: JobStore) -> None:
    ids = [create(store).id for _ in range(5)]
    create(store, user_id="someone-else")
    first = store.history("jdoe", limit=2)
    assert (first.total, len(first.items), first.has_more) == (5, 2, True)
    assert [item.id for item in first.items] == ids[::-1][:2]
    last = store.history("jdoe", limit=2, offset=4)
    assert (len(last.items), last.has_more) == (1, False)
    with pytest.raises(ValueError, match="limit must be 1-1000"):
        store.history("jdoe", limit=0)


def test_search_by_status_agent_dataset_and_dates(store: JobStore) -> None:
    a = create(store, dataset_id="VLASS2.1.eb1")
    create(store, dataset_id="VLASS2.2.eb2")
    create(store, dataset_id="VLASS2X1.eb3")
    store.transition(a.id, JobStatus.FAILED, JobUpdate(reason="staging"))
    assert [job.id for job in store.by_status(JobStatus.FAILED).items] == [a.id]
    assert store.search(dataset_id="VLASS2.1").total == 1
    assert store.search(dataset_id="VLASS2").total == 3
    assert store.search(agent="AlphaCal", status=JobStatus.QUEUED).total == 2
    assert store.search(agent="Other").total == 0
    now = datetime.now(timezone.utc)
    assert store.search(created_from=now - timedelta(minutes=5), created_to=now + timedelta(minutes=5)).total == 3
    assert store.search(created_to=now - timedelta(minutes=5)).total == 0


def test_active_jobs_history_and_budget_figures(store: JobStore) -> None:
    done, running, waiting = create(store), create(store), create(store)
    start = datetime(2026, 11, 1, tzinfo=timezone.utc)
    for record, job_id in ((done, "1"), (running, "2"), (waiting, "3")):
        store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id=job_id))
    store.transition(done.id, JobStatus.RUNNING, JobUpdate(started_at=start))
    store.transition(done.id, JobStatus.COMPLETED, JobUpdate(completed_at=start + timedelta(minutes=42), charged_su=2.8))
    store.transition(running.id, JobStatus.RUNNING, JobUpdate(started_at=start))
    assert [job.id for job in store.active("ls6")] == [running.id, waiting.id]
    assert store.active("frontera") == []
    assert store.past_runtimes_minutes("jdoe", "AlphaCal") == [42.0]
    assert store.su_committed("jdoe") == pytest.approx(2.8 + 2 * running.estimated_su)
