"""Ingestion as a Prefect task: one window of one source into the warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
from prefect import get_run_logger

from blocks.clusters import scheduler_for
from blocks.database import open_engine
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tacc_jobs.accounting.normalize import (
    DEFAULT_SOURCE_ZONE,
    CostRates,
    Normalized,
    normalize_records,
)
from tacc_jobs.accounting.sources import RecordFile, http_frames, load_teams
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.exceptions import InvalidAccountingInput
from tacc_jobs.settings import OrchestratorSettings, get_settings
from tacc_jobs.store import JobStore
from tasks.policies import cluster_task


def cost_rates(settings: OrchestratorSettings) -> CostRates:
    """The dollar rates configured for this orchestrator."""
    return CostRates(
        usd_per_gpu_hour=settings.usd_per_gpu_hour, usd_per_gpu_hour_by_type=settings.usd_per_gpu_hour_by_type
    )


def source_zone(name: str) -> str:
    """`name` if it is an IANA time zone.

    Raises:
        InvalidAccountingInput: Otherwise.

    Example:
        >>> source_zone("America/Chicago")
        'America/Chicago'
    """
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidAccountingInput(
            f"source_timezone: {name!r} is not an IANA time zone (e.g. America/Chicago, UTC)"
        ) from None
    return name


def record_file(path: str | None) -> RecordFile:
    """The file of a `source='file'` ingestion, opened and checked.

    Example:
        ```python
        record_file("tacc_jobs/accounting/sample/mock_jobs.json").teams  # the document's three teams
        ```
    """
    if not path:
        raise InvalidAccountingInput("path: a .csv, .json or .jsonl file is required for source='file'")
    return RecordFile(Path(path))


def normalized_chunks(
    source: str,
    system: str,
    start: datetime,
    end: datetime,
    records: RecordFile | None,
    url: str | None,
    zone: str,
    job_store: JobStore,
) -> Iterator[Normalized]:
    """The chosen source's rows, chunk by chunk, normalized.

    Example:
        ```python
        chunks = normalized_chunks("file", "-", start, end, record_file(path), None, "America/Chicago", JobStore(engine))
        ```
    """
    settings = get_settings()
    rates = cost_rates(settings)
    if source == "sacct":
        agents = job_store.agents_by_job_name(system)
        yield from sacct_chunks(
            scheduler_for(system).accounting(start, end), system, rates, agents, settings.ingest_chunk_rows
        )
    elif records is not None:
        for frame in records.frames(settings.ingest_chunk_rows):
            yield normalize_records(frame, "file", rates, zone)
    elif url:
        with httpx.Client(timeout=30.0, transport=httpx.HTTPTransport(retries=3)) as client:
            for frame in http_frames(url, client, start, end):
                yield normalize_records(frame, "http", rates, zone)
    else:
        raise InvalidAccountingInput("url: an http(s) URL is required for source='http'")


@cluster_task
def ingest_window(
    source: str,
    system: str,
    start: datetime,
    end: datetime,
    path: str | None = None,
    url: str | None = None,
    source_timezone: str = DEFAULT_SOURCE_ZONE,
) -> IngestSummary:
    """Ingest one window of one source: normalize, create teams, upsert, quarantine, record the run.

    The run's window becomes the next nightly run's watermark only when it completes. Bad input
    (`InvalidAccountingInput`) fails the run at once; only transient failures are retried.

    Example:
        ```python
        ingest_window("sacct", "ls6", datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 2, tzinfo=timezone.utc))
        ```
    """
    logger = get_run_logger()
    engine = open_engine()
    warehouse = Warehouse(engine)
    run_id = warehouse.start_run(source, system, start, end)
    summary = IngestSummary(run_id=run_id, source=source, system=system, window_start=start, window_end=end)
    try:
        if source not in ("sacct", "file", "http"):
            raise InvalidAccountingInput(f"source: {source!r} is not one of 'sacct', 'file', 'http'")
        zone = source_zone(source_timezone)
        records = record_file(path) if source == "file" else None
        teams = [*load_teams(get_settings().teams_file), *(records.teams if records else [])]
        chunks = normalized_chunks(source, system, start, end, records, url, zone, JobStore(engine))
        with closing(chunks):  # a failure ends the sacct stream (and its SSH session) here
            ingest_chunks(warehouse, chunks, summary, teams)
    except Exception as error:
        warehouse.finish_run(
            run_id, "FAILED", error=str(error)[:2000], rows_read=summary.rows_read, failed=summary.failed
        )
        raise
    counts = summary.model_dump(include={"rows_read", "inserted", "updated", "unchanged", "failed", "steps_folded"})
    warehouse.finish_run(run_id, "COMPLETED", **counts)
    logger.info("Ingested %s/%s %s..%s: %s in %.1f s", source, system, start, end, counts, summary.seconds)
    return summary
