"""Ingestion into the database (PostgreSQL and SQLite) and the flows around it."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from bench.synthetic import synthetic_sacct_rows
from tasks.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tasks.accounting.normalize import CostRates, normalize_records
from tasks.accounting.sources import file_frames
from tasks.accounting.warehouse import Warehouse
from tasks.store import migrate
from tasks.store.tables import JobUsageRow, QuarantineRow, TeamRow
from tests.conftest import REPO

SAMPLE = REPO / "tasks" / "accounting" / "sample"
NOV = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))


def count(engine: Engine, table) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table)) or 0


def run_file(warehouse: Warehouse, path: Path) -> IngestSummary:
    summary = IngestSummary(run_id=warehouse.start_run("file", "-", *NOV), source="file", system="-", window_start=NOV[0], window_end=NOV[1])
    return ingest_chunks(warehouse, (normalize_records(frame, "file", CostRates()) for frame in file_frames(path, 7)), summary,
                         {"ml-research": 400.0})


@pytest.fixture
def warehouse(engine: Engine) -> Warehouse:
    migrate(engine)
    return Warehouse(engine)


def test_same_input_twice_leaves_the_same_rows(warehouse: Warehouse) -> None:
    first = run_file(warehouse, SAMPLE / "jobs.json")
    second = run_file(warehouse, SAMPLE / "jobs.csv")
    assert (first.inserted, first.updated, first.unchanged, first.failed) == (30, 0, 0, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 30), "the CSV holds the same jobs"
    assert count(warehouse.engine, JobUsageRow.__table__) == 30
    with warehouse.engine.connect() as connection:
        teams = dict(connection.execute(select(TeamRow.name, TeamRow.budget_usd)).all())
    assert teams == {"ml-research": 400.0, "data-science": None, "ai-platform": None}


def test_changed_rows_are_updated_and_counted(warehouse: Warehouse, tmp_path: Path) -> None:
    run_file(warehouse, SAMPLE / "jobs.json")
    jobs = json.loads((SAMPLE / "jobs.json").read_text())
    jobs[0]["status"], jobs[1]["end_time"] = "FAILED", "2026-11-30T00:00:00Z"
    jobs.append({**jobs[2], "job_id": "new-1"})
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps(jobs))
    summary = run_file(warehouse, changed)
    assert (summary.inserted, summary.updated, summary.unchanged) == (1, 2, 28)


def test_malformed_rows_land_in_quarantine_with_their_reason(warehouse: Warehouse) -> None:
    rows = list(synthetic_sacct_rows(30, bad_every=10)) + [["999", "too", "short"]]
    summary = IngestSummary(run_id=warehouse.start_run("sacct", "ls6", *NOV), source="sacct", system="ls6", window_start=NOV[0], window_end=NOV[1])
    ingest_chunks(warehouse, sacct_chunks(rows, "ls6", CostRates(), {}, 40), summary)
    assert summary.failed == 4 and summary.inserted == 27 and summary.steps_folded == 60
    with warehouse.engine.connect() as connection:
        reasons = connection.execute(select(QuarantineRow.reason)).scalars().all()
    assert sorted(reasons) == ["End is before Start"] * 3 + ["expected 13 '|'-separated fields"]
