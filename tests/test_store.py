"""The job store, the same tests on SQLite and on PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, inspect, text

from tacc_jobs.exceptions import IllegalTransition, JobNotFound
from tacc_jobs.models import JobRequest, JobStatus, parse_request
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.store import JobStore, JobUpdate, migrate
from tacc_jobs.store.schema import MIGRATIONS_DIR
from tests.conftest import REPO


def request(**fields: object) -> JobRequest:
    base = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 3,
        "max_runtime": "1h",
        "user_id": "jdoe",
        "system": "ls6",
    }
    return parse_request({**base, **fields})


@pytest.fixture
def store(engine: Engine) -> JobStore:
    migrate(engine)
    return JobStore(engine)


def create(store: JobStore, **fields: object):
    job = request(**fields)
    return store.create(job, plan_request(job, PlanningContext()))


MIGRATE = """
import sys
from sqlalchemy import create_engine
from tacc_jobs.store import migrate
from tacc_jobs.store.engine import sqlite_engine
url = sys.argv[1]
migrate(sqlite_engine(url) if url.startswith("sqlite") else create_engine(url))
"""


def test_processes_that_open_a_new_database_at_once_all_migrate_it(engine: Engine) -> None:
    """A submission's first plan and a scheduled sweep open a new stack's database together: on
    SQLite Alembic's DDL runs outside any transaction, and one of them met "table already
    exists" (seen in CI as a failed submission)."""
    url = engine.url.render_as_string(hide_password=False)
    migrators = [
        subprocess.Popen([sys.executable, "-c", MIGRATE, url], stderr=subprocess.PIPE, text=True, cwd=REPO)
        for _ in range(6)
    ]
    errors = [process.communicate(timeout=120)[1] for process in migrators]
    assert all(process.returncode == 0 for process in migrators), "\n".join(errors)
    assert "jobs" in inspect(engine).get_table_names()


def test_migration_creates_the_seed_schema_and_is_idempotent(store: JobStore) -> None:
    migrate(store.engine)
    inspector = inspect(store.engine)
    columns = {column["name"] for column in inspector.get_columns("jobs")}
    assert {
        "id",
        "user_id",
        "agent",
        "dataset_id",
        "system",
        "queue",
        "scheduler_job_id",
        "status",
        "reason",
        "progress",
        "params",
        "result",
        "notes",
        "estimated_runtime_minutes",
        "gpu_count",
        "nodes",
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
    } <= columns
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
    done = store.transition(
        record.id, JobStatus.COMPLETED, JobUpdate(completed_at=started + timedelta(minutes=30), progress=1.0)
    )
    assert done.moved and done.record.runtime == timedelta(minutes=30)
    with pytest.raises(IllegalTransition, match="COMPLETED -> RUNNING is not allowed"):
        store.transition(record.id, JobStatus.RUNNING)
    with pytest.raises(IllegalTransition, match="QUEUED -> RUNNING is not allowed"):
        store.transition(create(store).id, JobStatus.RUNNING)
    kept = store.transition(record.id, JobStatus.COMPLETED, JobUpdate(result={"flagged_fraction": 0.02}))
    assert not kept.moved and kept.record.result == {"flagged_fraction": 0.02}


def test_an_unreachable_login_node_is_noted_once_per_cause_on_active_jobs_and_cleared_after(store: JobStore) -> None:
    running, queuing, ended, unsubmitted = (create(store) for _ in range(4))
    elsewhere = create(store, system="frontera")
    store.transition(running.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="1"))
    store.transition(running.id, JobStatus.RUNNING)
    store.transition(queuing.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="2", reason="Priority"))
    store.transition(ended.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="3"))
    store.transition(ended.id, JobStatus.COMPLETED)
    store.transition(elsewhere.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id="4"))
    prefix = "waiting for the login node"
    assert store.note_unobserved("ls6", prefix, f"{prefix}: Connection refused") == 2
    assert store.note_unobserved("ls6", prefix, f"{prefix}: Connection refused") == 0, "noted once per outage"
    reasons = {record.id: store.get(record.id).reason for record in (running, queuing, ended, unsubmitted, elsewhere)}
    assert reasons == {
        running.id: f"{prefix}: Connection refused",
        queuing.id: f"{prefix}: Connection refused",
        ended.id: None,
        unsubmitted.id: None,
        elsewhere.id: None,
    }
    assert (store.get(running.id).status, store.get(queuing.id).status) == (JobStatus.RUNNING, JobStatus.QUEUING)
    assert store.note_unobserved("ls6", prefix, f"{prefix}: asks for MFA") == 2, "another cause is news"
    assert store.note_unobserved("ls6", prefix, None) == 2
    assert [store.get(record.id).reason for record in (running, queuing)] == [None, None]
    store.note_unobserved("ls6", "100%_", "100xy")
    assert store.note_unobserved("ls6", "100%_", None) == 0, "the prefix is a prefix, not a LIKE pattern"


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


def charged(store: JobStore, su: float, ended: datetime, **fields: object):
    record = create(store, **fields)
    store.transition(record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id=str(uuid.uuid4().int % 10**6)))
    return store.transition(record.id, JobStatus.COMPLETED, JobUpdate(completed_at=ended, charged_su=su)).record


def test_charges_outlive_their_records_and_count_in_their_budget_period(store: JobStore) -> None:
    """cleanup deletes ended records after their retention; the budget must not forget them."""
    user = f"ledger{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    last_year = charged(store, 7.0, now - timedelta(days=400), user_id=user)
    this_month = charged(store, 2.5, now - timedelta(days=3), user_id=user)
    assert store.su_committed(user) == pytest.approx(9.5)
    assert store.delete([last_year.id, this_month.id]) == 2
    assert store.su_committed(user) == pytest.approx(9.5), "the charges stay after cleanup"
    assert store.su_committed(user, since=now - timedelta(days=30)) == pytest.approx(2.5), "last year's no longer count"


def test_a_packed_members_charge_reaches_the_ledger_once_however_often_it_is_set(store: JobStore) -> None:
    user = f"ledger{uuid.uuid4().hex[:6]}"
    members = [create(store, user_id=user) for _ in range(2)]
    store.set_member_charges({members[0].id: (3600.0, 1.25), members[1].id: (1800.0, 0.5)})
    store.set_member_charges({members[0].id: (3600.0, 1.5)})  # a charge read again from accounting
    store.delete([member.id for member in members])
    assert store.su_committed(user) == pytest.approx(2.0)


def test_the_ledger_migration_keeps_the_charges_already_made(engine: Engine) -> None:
    """An existing deployment upgrades with charged jobs on record: the budget keeps them."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0008")
    store = JobStore(engine)
    with engine.begin() as connection:  # as the 0008 schema held it
        connection.execute(
            text(
                "INSERT INTO jobs (id, user_id, agent, dataset_id, system, queue, status, progress, params, gpu_count,"
                " nodes, priority, attempt, charged_su, created_at, updated_at, completed_at) VALUES (:id, 'old', 'AlphaCal',"
                " 'd', 'ls6', 'gpu-a100', 'COMPLETED', 1.0, '{}', 3, 1, 'normal', 1, 4.5, :at, :at, :at)"
            ),
            {"id": uuid.uuid4().hex if engine.dialect.name == "sqlite" else uuid.uuid4(), "at": datetime(2026, 1, 5)},
        )
    migrate(engine)
    assert store.su_committed("old") == pytest.approx(4.5)
    assert store.su_committed("old", since=datetime(2026, 1, 6, tzinfo=timezone.utc)) == 0


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
    store.transition(
        done.id, JobStatus.COMPLETED, JobUpdate(completed_at=start + timedelta(minutes=42), charged_su=2.8)
    )
    store.transition(running.id, JobStatus.RUNNING, JobUpdate(started_at=start))
    assert [job.id for job in store.active("ls6")] == [running.id, waiting.id]
    assert store.active("frontera") == []
    assert store.past_runtimes_minutes("jdoe", "AlphaCal") == [42.0]
    assert store.su_committed("jdoe") == pytest.approx(2.8 + 2 * running.estimated_su)


HOLD_LOCK = """
import sys, time
from sqlalchemy import create_engine
from tacc_jobs.store import JobStore
with JobStore(create_engine(sys.argv[1])).exclusive("watch-jobs") as mine:
    print("held" if mine else "refused", flush=True)
    time.sleep(600)
"""


def test_the_sweep_lock_is_one_holder_at_a_time_and_dies_with_its_holder(store: JobStore) -> None:
    """What replaces watch-jobs' deployment concurrency slot: a holder SIGKILLed leaves nothing held."""
    url = store.engine.url.render_as_string(hide_password=False)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, url], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with store.exclusive("watch-jobs") as mine:
            assert not mine, "a second sweep does not run while the first holds the lock"
        with store.exclusive("another-lock") as mine:
            assert mine
    finally:
        holder.kill()
        holder.wait(timeout=30)
    deadline = time.monotonic() + 30  # PostgreSQL ends the dead session's locks as it notices the closed socket
    while True:
        with store.exclusive("watch-jobs") as mine:
            if mine or time.monotonic() > deadline:
                break
        time.sleep(0.2)
    assert mine, "the lock died with its holder"
