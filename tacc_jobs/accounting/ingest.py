"""The ingestion loop: normalized chunks into the warehouse, counted, bad rows quarantined."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime

import pandas as pd
from pydantic import BaseModel

from tacc_jobs.accounting.normalize import CostRates, Normalized, normalize_sacct
from tacc_jobs.accounting.sources import sacct_frames
from tacc_jobs.accounting.warehouse import UpsertCounts, Warehouse
from tacc_jobs.schedulers import SACCT_FIELDS


class IngestSummary(BaseModel):
    """What one ingestion run read and did."""

    run_id: uuid.UUID
    source: str
    system: str
    window_start: datetime
    window_end: datetime
    rows_read: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    failed: int = 0
    steps_folded: int = 0
    seconds: float = 0.0


def sacct_chunks(rows: Iterable[list[str]], system: str, rates: CostRates, agents: Mapping[str, str], chunk_size: int) -> Iterator[Normalized]:
    """sacct rows, normalized chunk by chunk; rows with the wrong field count go to quarantine."""
    for frame, malformed in sacct_frames(rows, chunk_size):
        chunk = normalize_sacct(frame, system, rates, agents)
        if malformed:
            reason = f"expected {len(SACCT_FIELDS)} '|'-separated fields"
            bad = pd.DataFrame({"raw": malformed, "reason": [reason] * len(malformed)})
            chunk.quarantine = pd.concat([chunk.quarantine, bad], ignore_index=True)
        yield chunk


def ingest_chunks(
    warehouse: Warehouse, chunks: Iterator[Normalized], summary: IngestSummary, team_budgets: dict[str, float] | None = None
) -> IngestSummary:
    """Write every chunk (teams first, then usage, then quarantine), one transaction per chunk.

    A chunk that was written stays written if a later one fails: re-running the same window
    upserts the same rows again, so a killed run re-run gives a complete, duplicate-free result.
    """
    started = time.monotonic()
    counts = UpsertCounts()
    for chunk in chunks:
        warehouse.ensure_teams({team for team in chunk.usage["team_name"].dropna().unique()}, team_budgets)
        counts += warehouse.upsert(chunk.usage, summary.run_id)
        summary.failed += warehouse.quarantine(chunk.quarantine, summary.source, summary.run_id)
        summary.rows_read += len(chunk.usage) + len(chunk.quarantine) + chunk.steps_folded
        summary.steps_folded += chunk.steps_folded
    summary.inserted, summary.updated, summary.unchanged = counts.inserted, counts.updated, counts.unchanged
    summary.seconds = time.monotonic() - started
    return summary
