"""File input (issue 14, items 7 and 8): the seed's `{"teams": [...], "jobs": [...]}` document
ingests teams and jobs in one run, and bad input fails at once, naming the file and what is
wrong, without a retry."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg
import pytest
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Failed
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from flows.ingest import ingest_job_metadata
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks
from tacc_jobs.accounting.normalize import CostRates, normalize_records
from tacc_jobs.accounting.sources import RecordFile
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.exceptions import InvalidAccountingInput
from tacc_jobs.store.tables import TeamRow
from tasks.accounting import ingest_window
from tasks.policies import is_transient
from tests.conftest import REPO

SAMPLE = REPO / "tacc_jobs" / "accounting" / "sample"
DOCUMENT = SAMPLE / "mock_jobs.json"  # the seed's shape: teams and jobs in one document
TEAMS = json.loads((SAMPLE / "teams.json").read_text())
NOV = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))


def test_a_teams_and_jobs_document_ingests_both(warehouse: Warehouse) -> None:
    records = RecordFile(DOCUMENT)
    summary = IngestSummary(
        run_id=warehouse.start_run("file", "-", *NOV), source="file", system="-", window_start=NOV[0], window_end=NOV[1]
    )
    ingest_chunks(
        warehouse,
        (normalize_records(frame, "file", CostRates()) for frame in records.frames(7)),
        summary,
        records.teams,
    )
    assert (summary.inserted, summary.failed) == (30, 0)
    with warehouse.engine.connect() as connection:
        teams = {row.name: (row.description, row.budget_usd) for row in connection.execute(select(TeamRow))}
    assert teams == {team["name"]: (team["description"], team["budget_usd"]) for team in TEAMS}
    assert RecordFile(SAMPLE / "jobs.json").teams == [], "a plain array of jobs still works, and holds no teams"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.json", None, "absent.json: no such file"),
        (
            "broken.json",
            '[{"job_id": "1",}]',
            "broken.json: not valid JSON (Expecting property name enclosed in double quotes: line 1",
        ),
        (
            "shape.json",
            '{"items": []}',
            'shape.json: expected a JSON array of job records, or a {"teams": [...], "jobs": [...]} document',
        ),
        ("numbers.json", "[1, 2]", "numbers.json: expected a JSON array of job records"),
        ("teams.json", '{"teams": [{"budget_usd": 5}], "jobs": []}', "teams.json: teams.0.name: Field required"),
        ("jobs.xlsx", "", "jobs.xlsx: use a .csv, .json or .jsonl file"),
    ],
)
def test_a_file_that_cannot_be_read_is_refused_when_opened(
    tmp_path: Path, name: str, content: str | None, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(InvalidAccountingInput) as refused:
        RecordFile(path)
    assert str(refused.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "columns.csv",
            "job_id,team,model_name,provider,gpu_type,start_time,end_time\n1,a,b,c,d,2026-11-01T00:00:00Z,2026-11-01T01:00:00Z\n",
            "columns.csv: missing columns team_name, status (job records need job_id, team_name, model_name",
        ),
        (
            "ragged.csv",
            "job_id,team_name,model_name,provider,gpu_type,start_time,end_time,status\n1,a,b,c,d,e,f,g\n2,a,b,c,d,e,f,g,h,i\n",
            "ragged.csv: not readable as CSV (Error tokenizing data. C error: Expected 8 fields in line 3, saw 10",
        ),
        (
            "columns.jsonl",
            '{"job_id": "1", "status": "COMPLETED"}\n',
            "columns.jsonl: missing columns team_name, model_name",
        ),
    ],
)
def test_a_wrong_column_set_is_refused_before_any_row_is_read(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InvalidAccountingInput) as refused:
        list(RecordFile(path).frames(100))
    assert str(refused.value).startswith(f"{tmp_path}/{message}")


@pytest.mark.usefixtures("prefect_server")
def test_bad_input_fails_the_flow_once_and_a_document_ingests(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('{"jobs": [')
    started = time.monotonic()
    state = ingest_job_metadata(source="file", path=str(broken), return_state=True)
    assert state.is_failed() and time.monotonic() - started < 60, "no retry five minutes later"
    with pytest.raises(InvalidAccountingInput, match=f"^{broken}: not valid JSON"):
        state.result()
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    assert flow_run.run_count == 1 and flow_run.empirical_policy.retries in (0, None)
    assert [task_run.run_count for task_run in task_runs] == [1], "a permanent error is not retried by the task either"
    zone = ingest_job_metadata(source="file", path=str(DOCUMENT), source_timezone="Mars/Olympus", return_state=True)
    with pytest.raises(InvalidAccountingInput, match="source_timezone: 'Mars/Olympus' is not an IANA time zone"):
        zone.result()
    summary = ingest_job_metadata(source="file", path=str(DOCUMENT))
    assert summary.inserted + summary.unchanged == 30 and summary.failed == 0


def test_only_transient_failures_are_retried() -> None:
    timed_out = OperationalError(
        "SELECT 1", {}, psycopg.errors.QueryCanceled("canceling statement due to statement timeout")
    )
    assert is_transient(ingest_window, None, Failed(data=timed_out)), "a database time-out may pass next time"
    assert not is_transient(ingest_window, None, Failed(data=InvalidAccountingInput("jobs.json: no such file")))
