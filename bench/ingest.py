"""Ingestion benchmark: 1,000,000 synthetic sacct rows into PostgreSQL.

Jobs come with their steps (whose CPU time and MaxRSS are summed and maxed), and 1% of them with
a requeued first attempt. Measured in the same run, on the same data, and printed as ratios:
  - the pipeline, end to end: parse + normalize (pandas/Arrow) + write, in chunks;
  - its write path: COPY into a staging table + INSERT .. ON CONFLICT DO UPDATE into the
    indexed `job_usage` (inside `Warehouse.upsert`), and the final-attempt marks of requeued jobs;
  - the naive path: one ORM upsert per job (SELECT by the key, then INSERT or UPDATE, commit), on a slice;
  - the ceiling: raw COPY of the same normalized jobs, serialized the same way, into a table
    with no index and no constraint.
Peak memory is the whole process's (`ru_maxrss`), imports included.

    .venv/bin/python -m bench.ingest [--rows 1000000] [--naive-jobs 2000] [--chunk-rows 100000]
"""

from __future__ import annotations

import argparse
import resource
import time
import uuid
from collections.abc import Collection
from datetime import datetime, timezone

import pandas as pd
import psycopg
from sqlalchemy import Engine, create_engine, select, text
from sqlalchemy.orm import Session

from bench.synthetic import synthetic_sacct_rows
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tacc_jobs.accounting.normalize import USAGE_COLUMNS, CostRates
from tacc_jobs.accounting.warehouse import TIMES, UpsertCounts, Warehouse, copy_into
from tacc_jobs.store import migrate
from tacc_jobs.store.tables import JobUsageRow

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REQUEUE_EVERY = 100  # 1% of jobs ran a first attempt that was requeued, as on a busy cluster
WINDOW = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))


class TimedWarehouse(Warehouse):
    """The warehouse, timing its write path: the upserts and the final-attempt marks."""

    write_seconds = 0.0

    def upsert(self, usage: pd.DataFrame, run_id: uuid.UUID) -> UpsertCounts:
        started = time.perf_counter()
        counts = super().upsert(usage, run_id)
        self.write_seconds += time.perf_counter() - started
        return counts

    def mark_superseded(self, jobs: Collection[tuple[str, str]]) -> int:
        started = time.perf_counter()
        unmarked = super().mark_superseded(jobs)
        self.write_seconds += time.perf_counter() - started
        return unmarked


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_pipeline(engine: Engine, jobs: int, chunk_rows: int, system: str) -> tuple[float, float, IngestSummary]:
    warehouse = TimedWarehouse(engine)
    summary = IngestSummary(
        run_id=warehouse.start_run("sacct", system, *WINDOW),
        source="sacct",
        system=system,
        window_start=WINDOW[0],
        window_end=WINDOW[1],
    )
    started = time.perf_counter()
    ingest_chunks(
        warehouse,
        sacct_chunks(
            synthetic_sacct_rows(jobs, seed=3, requeue_every=REQUEUE_EVERY), system, CostRates(), {}, chunk_rows
        ),
        summary,
    )
    return time.perf_counter() - started, warehouse.write_seconds, summary


def normalized_frames(jobs: int, system: str, seed: int) -> list[pd.DataFrame]:
    return [
        chunk.usage
        for chunk in sacct_chunks(
            synthetic_sacct_rows(jobs, seed=seed, requeue_every=REQUEUE_EVERY), system, CostRates(), {}, 100_000
        )
    ]


def naive_upserts(engine: Engine, jobs: int) -> float:
    """One ORM round trip per job: look it up, insert or update it, commit."""
    records = pd.concat(normalized_frames(jobs, "naive", 4)).astype(object)
    records = records.where(records.notna(), None).to_dict("records")
    started = time.perf_counter()
    with Session(engine) as session:
        for record in records:
            row = session.scalars(
                select(JobUsageRow).where(
                    JobUsageRow.system == record["system"],
                    JobUsageRow.job_id == record["job_id"],
                    JobUsageRow.submit_time == record["submit_time"],
                )
            ).first()
            if row is None:
                session.add(JobUsageRow(**record, ingested_at=datetime.now(timezone.utc)))
            else:
                for key, value in record.items():
                    setattr(row, key, value)
            session.commit()
    return len(records) / (time.perf_counter() - started)


def raw_copy(engine: Engine, jobs: int) -> float:
    """COPY of the normalized jobs into a table with no index or constraint: the ceiling."""
    frames = normalized_frames(jobs, "ceiling", 3)
    columns = ", ".join(f"{name} double precision" if name in TIMES else f"{name} text" for name in USAGE_COLUMNS)
    with engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE IF NOT EXISTS raw_usage ({columns})"))
    started = time.perf_counter()
    with engine.begin() as connection:
        for frame in frames:
            copy_into(connection, "raw_usage", frame)
    return sum(len(frame) for frame in frames) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="sacct rows (each job comes with 2 steps)")
    parser.add_argument("--naive-jobs", type=int, default=2_000, help="jobs in the naive slice")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args()
    jobs = args.rows // 3
    name = f"tacc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    try:
        migrate(engine)
        baseline_memory = peak_rss_mb()
        seconds, write_seconds, summary = run_pipeline(engine, jobs, args.chunk_rows, "bench")
        pipeline_memory = peak_rss_mb()
        rerun_seconds, _, rerun = run_pipeline(engine, jobs, args.chunk_rows, "bench")
        naive_rate = naive_upserts(engine, args.naive_jobs)
        ceiling_rate = raw_copy(engine, jobs)
    finally:
        engine.dispose()
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    write_rate = summary.inserted / write_seconds
    print(
        f"input: {summary.rows_read:,} sacct rows = {summary.inserted:,} jobs + {summary.steps_folded:,} steps "
        f"({summary.failed} quarantined), chunks of {args.chunk_rows:,} rows"
    )
    print(
        f"pipeline end to end: {seconds:.1f} s = {summary.rows_read / seconds:,.0f} rows/s "
        f"(parse+normalize {seconds - write_seconds:.1f} s, write {write_seconds:.1f} s)"
    )
    print(
        f"re-run of the same window: {rerun_seconds:.1f} s, {rerun.unchanged:,} unchanged, {rerun.inserted} inserted, {rerun.updated} updated"
    )
    print(f"write path (COPY to staging + INSERT .. ON CONFLICT into indexed job_usage): {write_rate:,.0f} jobs/s")
    print(f"naive per-job ORM upsert ({args.naive_jobs:,} jobs): {naive_rate:,.0f} jobs/s")
    print(f"raw COPY into an unindexed table: {ceiling_rate:,.0f} jobs/s")
    print(
        f"write path vs naive: {write_rate / naive_rate:.0f}x (target >= 50x); "
        f"end to end vs naive: {summary.inserted / seconds / naive_rate:.0f}x"
    )
    print(f"write path vs raw COPY: {100 * write_rate / ceiling_rate:.0f}% (target >= 30%)")
    print(
        f"peak memory: {pipeline_memory:.0f} MB for the process ({baseline_memory:.0f} MB before the pipeline) (target < 500 MB)"
    )


if __name__ == "__main__":
    main()
