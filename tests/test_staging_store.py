"""Staging records: priority order, parallel slots, bandwidth history (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine

from tacc_jobs.store import StagingStatus, StagingStore, migrate


@pytest.fixture
def store(engine: Engine) -> StagingStore:
    migrate(engine)
    return StagingStore(engine)


def test_high_priority_is_served_first_within_the_slots(store: StagingStore) -> None:
    store.request("ls6", "normal-early", "normal")
    store.request("ls6", "high-late", "high")
    store.request("frontera", "elsewhere", "normal")
    assert store.waiting_ahead("ls6", "normal-early") == 1 and store.waiting_ahead("ls6", "high-late") == 0
    assert not store.try_start("ls6", "normal-early", max_parallel=1)
    assert store.try_start("ls6", "high-late", max_parallel=1)
    assert not store.try_start("ls6", "normal-early", max_parallel=1), "the only slot is taken"
    assert store.try_start("frontera", "elsewhere", max_parallel=1), "slots are per system"
    store.update("ls6", "high-late", status=StagingStatus.STAGED)
    assert store.try_start("ls6", "normal-early", max_parallel=1)
    assert store.get("ls6", "normal-early").status is StagingStatus.STAGING


def test_request_requeues_finished_records_but_not_running_ones(store: StagingStore) -> None:
    store.request("ls6", "d", "normal")
    store.try_start("ls6", "d", max_parallel=2)
    assert store.request("ls6", "d", "high").status is StagingStatus.STAGING
    store.update("ls6", "d", status=StagingStatus.FAILED, reason="rsync exited 23")
    again = store.request("ls6", "d", "high")
    assert (again.status, again.reason, again.priority) == (StagingStatus.QUEUED, None, "high")


def test_bandwidth_from_recent_transfers(store: StagingStore) -> None:
    assert store.bandwidth("ls6.tacc.utexas.edu") is None
    store.record_transfer("ls6.tacc.utexas.edu", 100_000_000, 2.0)
    store.record_transfer("ls6.tacc.utexas.edu", 300_000_000, 2.0)
    store.record_transfer("ls6.tacc.utexas.edu", 10, 5.0)  # too small to measure anything
    store.record_transfer("frontera.tacc.utexas.edu", 100_000_000, 10.0)
    assert store.bandwidth("ls6.tacc.utexas.edu") == pytest.approx(100_000_000)


def test_a_second_request_for_a_dataset_being_staged_waits_then_runs(store: StagingStore) -> None:
    store.request("ls6", "d", "normal")
    assert store.try_start("ls6", "d", max_parallel=2)
    assert store.request("ls6", "d", "normal").status is StagingStatus.STAGING, "the first stager keeps it"
    assert not store.try_start("ls6", "d", max_parallel=2)
    store.update("ls6", "d", status=StagingStatus.STAGED)
    assert store.request("ls6", "d", "normal").status is StagingStatus.QUEUED
    assert store.try_start("ls6", "d", max_parallel=2), "the second stager runs (and only verifies)"


def test_a_dead_stager_does_not_block_the_dataset(store: StagingStore) -> None:
    from datetime import datetime, timedelta, timezone

    store.request("ls6", "d", "normal")
    store.try_start("ls6", "d", max_parallel=1)
    store.update("ls6", "d", updated_at=datetime.now(timezone.utc) - timedelta(hours=2))
    assert store.request("ls6", "d", "normal").status is StagingStatus.QUEUED


def test_first_requests_of_one_dataset_at_once_make_one_record(store: StagingStore) -> None:
    barrier = threading.Barrier(8)

    def first_request(index: int) -> str:
        barrier.wait()  # all eight look the dataset up, find nothing, and insert together
        return store.request("ls6", "fresh", "normal").dataset_id

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(first_request, range(8))) == ["fresh"] * 8
    with store.engine.connect() as connection:
        assert (
            connection.exec_driver_sql("SELECT count(*) FROM dataset_stagings WHERE dataset_id = 'fresh'").scalar() == 1
        )
