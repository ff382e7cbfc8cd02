"""ingest-job-metadata: the nightly ingestion of job accounting into the database."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Literal

from prefect import flow
from prefect.artifacts import create_table_artifact

from blocks.database import open_engine
from tacc_jobs.accounting.ingest import IngestSummary
from tacc_jobs.accounting.normalize import DEFAULT_SOURCE_ZONE
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.exceptions import InvalidAccountingInput
from tacc_jobs.settings import get_settings
from tasks.accounting import ingest_window


def ingestion_window(
    source: str, system: str, start: datetime | None, end: datetime | None
) -> tuple[datetime, datetime]:
    """The window to read: as given, else from the last watermark (less the overlap) to now,
    so a missed night is caught up; a first run reads the last day. sacct returns every job
    eligible before the window's end that had not ended before its start: with the overlap, each
    job that ended since the last run, and each record slurmdbd received late, is read again.

    Example:
        ```python
        ingestion_window("sacct", "ls6", None, None)  # (last window end - 24 h, now)
        ```
    """
    settings = get_settings()
    end = end or datetime.now(timezone.utc)
    if start is None:
        watermark = Warehouse(open_engine()).watermark(source, system)
        start = watermark - timedelta(hours=settings.ingest_overlap_hours) if watermark else end - timedelta(days=1)
    if start >= end:
        raise InvalidAccountingInput(f"start: {start.isoformat()} is not before end {end.isoformat()}")
    return start, end


@flow(name="ingest-job-metadata", flow_run_name="ingest-job-metadata/{source}/{system}")
def ingest_job_metadata(
    source: Literal["sacct", "file", "http"] = "sacct",
    start: datetime | None = None,
    end: datetime | None = None,
    system: str = "local",
    path: str | None = None,
    url: str | None = None,
    source_timezone: str = DEFAULT_SOURCE_ZONE,
) -> IngestSummary:
    """Ingest job-accounting metadata: `sacct` of a system, a JSON/CSV file, or an HTTP feed.

    Rows are normalized (steps folded, heterogeneous components folded, every attempt of a
    requeued job kept, array tasks kept, states and times parsed, GPU counts and costs computed),
    upserted idempotently by (system, job id, submit time), bad rows quarantined with their
    reason. Without `start`, the window starts at the last successful run's end less an overlap.
    File and HTTP times written without an offset are in `source_timezone` (sacct's are UTC).

    The flow itself never retries: bad input (a missing file, malformed JSON, a wrong column set)
    fails it at once with a message naming the input; the task retries transient failures only.

    Example:
        ```python
        from flows.ingest import ingest_job_metadata
        ingest_job_metadata(source="file", path="tacc_jobs/accounting/sample/jobs.json")
        ingest_job_metadata(source="sacct", system="ls6")  # the nightly run
        ```
    """
    window_start, window_end = ingestion_window(source, system, start, end)
    summary = ingest_window(source, system, window_start, window_end, path, url, source_timezone)
    create_table_artifact(
        table=[{"field": key, "value": str(value)} for key, value in summary.model_dump().items()],
        key=f"ingest-summary-{source}-{system}".lower().replace("_", "-"),
        description=f"Ingestion of {source} ({system}) {window_start:%Y-%m-%d %H:%M} .. {window_end:%Y-%m-%d %H:%M} UTC",
    )
    return summary
