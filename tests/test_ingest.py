"""Ingestion into the database (PostgreSQL and SQLite) and the flows around it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from sqlalchemy import Engine, create_engine, func, inspect, select

from bench.synthetic import synthetic_sacct_rows
from flows.ingest import ingest_job_metadata
from flows.report import usage_report
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tacc_jobs.accounting.normalize import CostRates, normalize_records
from tacc_jobs.accounting.sources import RecordFile, Team
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.schedulers import SACCT_FIELDS, JobSubmission
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.store import migrate
from tacc_jobs.store.tables import IngestRunRow, JobUsageRow, QuarantineRow, TeamRow
from tests.conftest import REPO, wait_until

SAMPLE = REPO / "tacc_jobs" / "accounting" / "sample"
NOV = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))


def count(engine: Engine, table) -> int:
    with engine.connect() as connection:
        return connection.scalar(select(func.count()).select_from(table)) or 0


def run_file(warehouse: Warehouse, path: Path) -> IngestSummary:
    summary = IngestSummary(
        run_id=warehouse.start_run("file", "-", *NOV), source="file", system="-", window_start=NOV[0], window_end=NOV[1]
    )
    return ingest_chunks(
        warehouse,
        (normalize_records(frame, "file", CostRates()) for frame in RecordFile(path).frames(7)),
        summary,
        [Team(name="ml-research", budget_usd=400.0)],
    )


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
    summary = IngestSummary(
        run_id=warehouse.start_run("sacct", "ls6", *NOV),
        source="sacct",
        system="ls6",
        window_start=NOV[0],
        window_end=NOV[1],
    )
    ingest_chunks(warehouse, sacct_chunks(rows, "ls6", CostRates(), {}, 40), summary)
    assert summary.failed == 4 and summary.inserted == 27 and summary.steps_folded == 60
    with warehouse.engine.connect() as connection:
        reasons = connection.execute(select(QuarantineRow.reason)).scalars().all()
    assert sorted(reasons) == ["End is before Start"] * 3 + ["expected 17 '|'-separated fields"]


class PagedFeed:
    """A real paginated JSON endpoint on loopback: `{"items": [...], "next": ...}`."""

    def __init__(self, records: list[dict[str, object]], page_size: int) -> None:
        pages = [records[i : i + page_size] for i in range(0, len(records), page_size)]
        requested: list[str] = []
        self.requested = requested

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                requested.append(self.path)
                number = int(self.path.rsplit("page=", 1)[1]) if "page=" in self.path else 0
                body = {"items": pages[number], "next": f"/jobs?page={number + 1}" if number + 1 < len(pages) else None}
                payload = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/jobs"


@pytest.fixture
def feed() -> Iterator[PagedFeed]:
    records = json.loads((SAMPLE / "jobs.json").read_text())
    server = PagedFeed([{**record, "job_id": f"http-{record['job_id']}"} for record in records], page_size=8)
    yield server
    server.server.shutdown()


@pytest.mark.usefixtures("prefect_server")
def test_ingestion_flows_and_report_on_postgresql(postgres_block: str, feed: PagedFeed) -> None:
    engine = create_engine(postgres_block)
    before = count(engine, JobUsageRow.__table__) if inspect(engine).has_table("job_usage") else 0
    from_file = ingest_job_metadata(source="file", path=str(SAMPLE / "jobs.json"))
    from_http = ingest_job_metadata(source="http", url=feed.url)
    assert (from_file.inserted + from_file.unchanged, from_http.inserted + from_http.unchanged) == (30, 30)
    asked = parse_qs(urlsplit(feed.requested[0]).query)
    assert (asked["start"], asked["end"]) == (
        [from_http.window_start.isoformat()],
        [from_http.window_end.isoformat()],
    ), "the feed is asked for the window"
    assert len(feed.requested) == 4 and all("start=" not in path for path in feed.requested[1:]), (
        "then it follows its next links"
    )
    assert count(engine, JobUsageRow.__table__) == before + from_file.inserted + from_http.inserted
    report = usage_report(*NOV)
    teams = {row["team"]: row for row in report.by_team}
    assert set(teams) >= {"ml-research", "data-science", "ai-platform"}
    assert teams["ml-research"]["budget_usd"] == 400.0 and teams["ml-research"]["budget_used_pct"] > 0
    assert [row["cost_usd"] for row in report.by_team] == sorted(
        (row["cost_usd"] for row in report.by_team), reverse=True
    )
    assert Path(report.chart_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with get_client(sync_client=True) as client:
        keys = [
            "usage-cost-by-team",
            "usage-cost-by-model",
            "usage-user-metrics",
            "usage-daily-cost-chart",
            "ingest-summary-http-local",
        ]
        found = {
            artifact.key: artifact
            for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        }
    assert set(found) == set(keys)
    assert "data:image/png;base64," in found["usage-daily-cost-chart"].data


@pytest.mark.usefixtures("prefect_server")
def test_nightly_window_resumes_from_the_watermark_with_overlap(
    postgres_block: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TACC_ORCH_INGEST_OVERLAP_HOURS", "6")
    first = ingest_job_metadata(source="sacct", system="local", start=NOV[0], end=NOV[1])
    nightly = ingest_job_metadata(source="sacct", system="local")
    assert first.window_end == NOV[1]
    assert nightly.window_start == NOV[1] - timedelta(hours=6)
    assert nightly.window_end > datetime.now(timezone.utc) - timedelta(minutes=5)


def test_real_sacct_from_the_sandbox_cluster(slurm: SlurmScheduler, ls6_block, postgres_block: str) -> None:
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    prefix = f"ingest-{uuid.uuid4().hex[:8]}"

    def submit(body: str, *extra: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:4]}"  # the job name is the idempotency key: one per job
        work_dir = f"{slurm.scratch_root}/{name}"
        return slurm.submit(
            JobSubmission(
                name=name,
                script=f"#!/bin/bash\n{body}\n",
                work_dir=work_dir,
                stdout_path=f"{work_dir}/out",
                stderr_path=f"{work_dir}/err",
                sbatch_args=["-p", "gpu-a100", "-N", "1", "-t", "00:02:00", *extra],
            )
        )

    ok, failed, array = submit("sleep 1"), submit("exit 3"), submit("sleep 1", "--array=1-2")
    expected = {ok, failed, f"{array}_1", f"{array}_2"}

    def all_accounted() -> bool:
        rows = {
            row[0]: row[SACCT_FIELDS.index("State")]
            for row in slurm.accounting(start, datetime.now(timezone.utc) + timedelta(minutes=1))
        }
        return all(rows.get(job_id, "PENDING") in ("COMPLETED", "FAILED") for job_id in expected)

    wait_until(all_accounted, timeout=90, interval=1)
    summary = ingest_job_metadata(
        source="sacct", system="ls6", start=start, end=datetime.now(timezone.utc) + timedelta(minutes=1)
    )
    assert summary.steps_folded >= 4 and summary.failed == 0
    engine = create_engine(postgres_block)
    with engine.connect() as connection:
        rows = {
            row.job_id: row
            for row in connection.execute(
                select(JobUsageRow).where(JobUsageRow.system == "ls6", JobUsageRow.job_name.like(f"{prefix}-%"))
            )
        }
    assert set(rows) == expected, "steps folded, array tasks kept as jobs"
    assert (rows[failed].status, rows[failed].exit_code) == ("failed", "3:0")
    assert rows[ok].status == "completed" and rows[ok].gpu_count == 3 and rows[ok].gpu_type == "a100"
    assert rows[ok].team_name == "sandbox" and rows[ok].su_charged == 1 * 0.25 * 4
    again = ingest_job_metadata(source="sacct", system="ls6", start=start, end=summary.window_end)
    assert again.inserted == 0 and again.unchanged >= len(expected)


INGEST_SCRIPT = """
import sys, time
from datetime import datetime, timezone
from sqlalchemy import create_engine
from bench.synthetic import synthetic_sacct_rows
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tacc_jobs.accounting.normalize import CostRates
from tacc_jobs.accounting.warehouse import Warehouse
warehouse = Warehouse(create_engine(sys.argv[1]))
window = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))
run_id = warehouse.start_run("sacct", "killed", *window)
summary = IngestSummary(run_id=run_id, source="sacct", system="killed", window_start=window[0], window_end=window[1])
def slow(chunks):
    for chunk in chunks:
        yield chunk
        time.sleep(float(sys.argv[2]))
ingest_chunks(warehouse, slow(sacct_chunks(synthetic_sacct_rows(20000, seed=5), "killed", CostRates(), {}, 2000)), summary)
warehouse.finish_run(run_id, "COMPLETED", inserted=summary.inserted)
print(summary.inserted, summary.unchanged)
"""


def test_killed_ingestion_rerun_is_complete_and_duplicate_free(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    usage = JobUsageRow.__table__
    killed = subprocess.Popen([sys.executable, "-c", INGEST_SCRIPT, postgres_url, "0.5"], cwd=REPO)

    def partly_written() -> bool:
        with engine.connect() as connection:
            return (
                connection.scalar(select(func.count()).select_from(usage).where(usage.c.system == "killed")) or 0
            ) > 0

    wait_until(partly_written, timeout=60)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    with engine.connect() as connection:
        partial = connection.scalar(select(func.count()).select_from(usage).where(usage.c.system == "killed"))
        runs = connection.execute(select(IngestRunRow.status).where(IngestRunRow.system == "killed")).scalars().all()
    assert 0 < partial < 20000 and runs == ["RUNNING"]
    rerun = subprocess.run(
        [sys.executable, "-c", INGEST_SCRIPT, postgres_url, "0"], cwd=REPO, capture_output=True, text=True, check=True
    )
    inserted, unchanged = map(int, rerun.stdout.split())
    assert inserted == 20000 - partial and unchanged == partial
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(usage).where(usage.c.system == "killed"))
        distinct = connection.scalar(
            select(func.count(func.distinct(usage.c.job_id))).where(usage.c.system == "killed")
        )
    assert total == distinct == 20000
