"""The ingestion loop: normalized chunks into the warehouse, counted, bad rows quarantined."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime

import pandas as pd
from pydantic import BaseModel

from tacc_jobs.accounting.normalize import CostRates, Normalized
from tacc_jobs.accounting.sacct import normalize_sacct
from tacc_jobs.accounting.sources import Team, sacct_frames
from tacc_jobs.accounting.warehouse import UpsertCounts, Warehouse, requeue_candidates
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


def sacct_chunks(
    rows: Iterable[list[str]], system: str, rates: CostRates, agents: Mapping[str, str], chunk_size: int
) -> Iterator[Normalized]:
    """sacct rows, normalized chunk by chunk; rows with the wrong field count go to quarantine.

    Example:
        ```python
        chunks = sacct_chunks(scheduler.accounting(start, end), "ls6", CostRates(), {}, chunk_size=100_000)
        ```
    """
    for frame, malformed in sacct_frames(rows, chunk_size):
        chunk = normalize_sacct(frame, system, rates, agents)
        if malformed:
            reason = f"expected {len(SACCT_FIELDS)} '|'-separated fields"
            bad = pd.DataFrame({"raw": malformed, "reason": [reason] * len(malformed)})
            chunk.quarantine = pd.concat([chunk.quarantine, bad], ignore_index=True)
        yield chunk


def ingest_chunks(
    warehouse: Warehouse, chunks: Iterator[Normalized], summary: IngestSummary, teams: Sequence[Team] = ()
) -> IngestSummary:
    """Write `teams` (with their budgets and descriptions), then every chunk (the teams it names,
    its usage, its quarantine), one transaction per chunk; last, unmark the attempts that later
    attempts superseded.

    A chunk that was written stays written if a later one fails: re-running the same window
    upserts the same rows again, so a killed run re-run gives a complete, duplicate-free result.

    Example:
        ```python
        summary = IngestSummary(run_id=warehouse.start_run("file", "-", start, end), source="file", system="-",
                                window_start=start, window_end=end)
        ingest_chunks(warehouse, (normalize_records(frame, "file", CostRates()) for frame in records.frames(10_000)),
                      summary, records.teams)
        ```
    """
    started = time.monotonic()
    counts = UpsertCounts()
    candidates: set[tuple[str, str]] = set()
    warehouse.ensure_teams(teams)
    for chunk in chunks:
        candidates |= requeue_candidates(chunk.usage)
        warehouse.ensure_teams(Team(name=name) for name in chunk.usage["team_name"].dropna().unique() if name)
        counts += warehouse.upsert(chunk.usage, summary.run_id)
        summary.failed += warehouse.quarantine(chunk.quarantine, summary.source, summary.run_id)
        summary.rows_read += len(chunk.usage) + len(chunk.quarantine) + chunk.steps_folded
        summary.steps_folded += chunk.steps_folded
    warehouse.mark_superseded(candidates)
    summary.inserted, summary.updated, summary.unchanged = counts.inserted, counts.updated, counts.unchanged
    summary.seconds = time.monotonic() - started
    return summary
