"""Accounted usage in the database: teams, idempotent bulk upserts, quarantine, ingestion runs."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
from pydantic import BaseModel
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    Uuid,
    and_,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    true,
    tuple_,
    update,
)

from tacc_jobs.accounting.normalize import USAGE_COLUMNS
from tacc_jobs.accounting.sources import Team
from tacc_jobs.accounting.sqltime import epoch
from tacc_jobs.store.engine import upsert_into
from tacc_jobs.store.tables import (
    IngestRunRow,
    JobUsageRow,
    QuarantineRow,
    TeamRow,
    UtcDateTime,
)

KEYS = ("system", "job_id", "submit_time")
"""A job is one attempt of one scheduler job: Slurm reuses ids (a controller reset, MaxJobId
wrapping) and gives each attempt of a requeued job a new submit time, so the submit time tells
them apart. The end time, in XDMoD's key, is left out: it changes while a job runs."""
COMPARED = [column for column in USAGE_COLUMNS if column not in KEYS]
WRITTEN = [*USAGE_COLUMNS, "run_id", "ingested_at"]
"""What an upsert writes: the staged usage columns, and the run and time, given once."""
REQUEUE_LINK_SECONDS = 3600
"""A requeued job's next attempt is submitted when the last one's epilog ends, within this of its end."""
ATTEMPT_END_STATES = ("requeued", "preempted", "node_fail", "boot_fail")
"""States in which an attempt can end and be followed by another."""


class UpsertCounts(BaseModel):
    """What one upsert did to the rows it was given."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    def __add__(self, other: UpsertCounts) -> UpsertCounts:
        return UpsertCounts(
            inserted=self.inserted + other.inserted,
            updated=self.updated + other.updated,
            unchanged=self.unchanged + other.unchanged,
        )


TIMES = ("submit_time", "eligible_time", "start_time", "end_time")
EPOCH = pd.Timestamp(0, tz="UTC")


def _staging_table(postgres: bool) -> Table:
    """A temporary table shaped like `job_usage`; on PostgreSQL its times are epoch seconds,
    which COPY loads far faster than formatted timestamps (`to_timestamp` converts them)."""
    usage = JobUsageRow.__table__
    columns = (Column(name, Float() if postgres and name in TIMES else usage.c[name].type) for name in USAGE_COLUMNS)
    return Table("usage_staging", MetaData(), *columns, prefixes=["TEMPORARY"])


def requeue_candidates(usage: pd.DataFrame) -> set[tuple[str, str]]:
    """The (system, job id) of rows that may be attempts of a requeued job: one that ended in a
    state an attempt can end in, or one eligible after its submission (Slurm holds a requeued
    attempt for its requeue delay). The attempts of other jobs need no look.

    Example:
        >>> rows = pd.DataFrame({"system": ["ls6"] * 3, "job_id": ["1", "2", "3"], "status": ["node_fail", "completed", "completed"],
        ...                      "submit_time": pd.to_datetime(["2026-11-02T10:00:00"] * 3, utc=True),
        ...                      "eligible_time": pd.to_datetime(["2026-11-02T10:00:00", "2026-11-02T10:02:01", "2026-11-02T10:00:00"], utc=True)})
        >>> sorted(requeue_candidates(rows))
        [('ls6', '1'), ('ls6', '2')]
    """
    candidates = (usage["eligible_time"] > usage["submit_time"]) | usage["status"].isin(ATTEMPT_END_STATES)
    return set(usage.loc[candidates, ["system", "job_id"]].itertuples(index=False, name=None))


def copy_into(connection: Connection, table: str, frame: pd.DataFrame) -> None:
    """COPY a frame into a PostgreSQL table (its times as epoch seconds), serialized by Arrow."""
    frame = frame.assign(**{name: (frame[name] - EPOCH).dt.total_seconds() for name in TIMES if name in frame})
    buffer = pa.BufferOutputStream()
    # one chunk per column: Arrow's CSV writer emits NUL bytes for an empty chunk (a concat's)
    pa_csv.write_csv(
        pa.Table.from_pandas(frame, preserve_index=False).combine_chunks(),
        buffer,
        pa_csv.WriteOptions(include_header=False, quoting_style="needed"),
    )
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table} ({', '.join(frame.columns)}) FROM STDIN WITH (FORMAT csv)") as copy:
        copy.write(memoryview(buffer.getvalue()))


class Warehouse:
    """Usage tables in PostgreSQL (COPY into a staging table) or SQLite (executemany).

    Example:
        ```python
        warehouse = Warehouse(open_engine())
        counts = warehouse.upsert(normalized.usage, run_id)
        ```
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    def ensure_teams(self, teams: Iterable[Team]) -> None:
        """Create the teams that do not exist yet; set budgets and descriptions where given (of a
        team listed twice, the last)."""
        named = {team.name: team for team in teams}
        rows = [named[name].model_dump() for name in sorted(named)]
        if not rows:
            return
        statement = upsert_into(self.engine, TeamRow.__table__).values(rows)
        given = {
            "budget_usd": func.coalesce(statement.excluded.budget_usd, TeamRow.__table__.c.budget_usd),
            "description": func.coalesce(statement.excluded.description, TeamRow.__table__.c.description),
        }
        with self.engine.begin() as connection:
            connection.execute(statement.on_conflict_do_update(index_elements=["name"], set_=given))

    def _load_staging(self, connection: Connection, staging: Table, frame: pd.DataFrame) -> None:
        if self.postgres:
            copy_into(connection, staging.name, frame)
        else:
            records = frame.astype(object).where(frame.notna(), None).to_dict("records")
            connection.execute(staging.insert(), records)

    def upsert(self, usage: pd.DataFrame, run_id: uuid.UUID) -> UpsertCounts:
        """Upsert one chunk by `KEYS` with ON CONFLICT DO UPDATE, in one transaction.

        Rows already stored with the same values are left untouched and counted unchanged.
        """
        frame = usage.drop_duplicates(list(KEYS), keep="last")
        if frame.empty:
            return UpsertCounts()
        target, staging = JobUsageRow.__table__, _staging_table(self.postgres)
        joined = staging.join(target, and_(*(target.c[key] == staging.c[key] for key in KEYS)))
        differs = or_(*(target.c[column].is_distinct_from(staging.c[column]) for column in COMPARED))
        with self.engine.begin() as connection:
            staging.create(connection)
            self._load_staging(connection, staging, frame[USAGE_COLUMNS])
            values = [
                func.to_timestamp(staging.c[name]) if self.postgres and name in TIMES else staging.c[name]
                for name in USAGE_COLUMNS
            ]
            given = [literal(run_id, Uuid()), literal(datetime.now(timezone.utc), UtcDateTime())]
            statement = upsert_into(self.engine, target).from_select(WRITTEN, select(*values, *given).where(true()))
            statement = statement.on_conflict_do_update(
                index_elements=list(KEYS),
                set_={name: statement.excluded[name] for name in WRITTEN if name not in KEYS},
                where=or_(*(target.c[column].is_distinct_from(statement.excluded[column]) for column in COMPARED)),
            )
            if self.postgres:
                # one statement: the upsert reports which rows it inserted (xmax = 0) and updated
                written = statement.returning(literal_column("xmax = 0").label("inserted")).cte("written")
                inserted, updated = connection.execute(
                    select(func.count().filter(written.c.inserted), func.count().filter(~written.c.inserted))
                ).one()
            else:
                existing = connection.scalar(select(func.count()).select_from(joined)) or 0
                updated = connection.scalar(select(func.count()).select_from(joined).where(differs)) or 0
                connection.execute(statement)
                inserted = len(frame) - existing
            staging.drop(connection)
        return UpsertCounts(inserted=inserted, updated=updated, unchanged=len(frame) - inserted - updated)

    def mark_superseded(self, jobs: Collection[tuple[str, str]]) -> int:
        """Unmark as final every attempt of `jobs` ((system, job id) pairs, `requeue_candidates`)
        that a later attempt of the same job and user followed: one submitted at, or within
        `REQUEUE_LINK_SECONDS` after, its end. An attempt stored by an earlier run is unmarked
        when its successor arrives. Returns how many attempts were unmarked.

        Example:
            ```python
            warehouse.mark_superseded({("ls6", "7001")})  # 1: its NODE_FAIL attempt, followed by a rerun
            ```
        """
        if not jobs:
            return 0
        usage, later = JobUsageRow.__table__, JobUsageRow.__table__.alias("later")
        followed = exists().where(
            later.c.system == usage.c.system,
            later.c.job_id == usage.c.job_id,
            later.c.user_name.is_not_distinct_from(usage.c.user_name),
            later.c.submit_time >= usage.c.end_time,
            epoch(later.c.submit_time) - epoch(usage.c.end_time) <= REQUEUE_LINK_SECONDS,
        )
        candidates = Table(
            "requeue_candidates",
            MetaData(),
            Column("system", String(32)),
            Column("job_id", String(64)),
            prefixes=["TEMPORARY"],
        )
        with self.engine.begin() as connection:
            candidates.create(connection)
            connection.execute(
                candidates.insert(), [{"system": system, "job_id": job_id} for system, job_id in sorted(jobs)]
            )
            named = tuple_(usage.c.system, usage.c.job_id).in_(select(candidates.c.system, candidates.c.job_id))
            unmarked = connection.execute(
                update(usage).where(usage.c.final_attempt, named, followed).values(final_attempt=False)
            ).rowcount
            candidates.drop(connection)
        return unmarked

    def quarantine(self, rows: pd.DataFrame, source: str, run_id: uuid.UUID) -> int:
        """Keep bad input rows with their reasons; returns how many."""
        if rows.empty:
            return 0
        now = datetime.now(timezone.utc)
        records = [
            {"run_id": run_id, "source": source, "raw": raw, "reason": reason, "created_at": now}
            for raw, reason in zip(rows["raw"], rows["reason"])
        ]
        with self.engine.begin() as connection:
            connection.execute(QuarantineRow.__table__.insert(), records)
        return len(records)

    def start_run(self, source: str, system: str, window_start: datetime, window_end: datetime) -> uuid.UUID:
        """Record an ingestion run as RUNNING; returns its id."""
        run_id = uuid.uuid4()
        with self.engine.begin() as connection:
            connection.execute(
                IngestRunRow.__table__.insert().values(
                    id=run_id,
                    source=source,
                    system=system,
                    window_start=window_start,
                    window_end=window_end,
                    status="RUNNING",
                    rows_read=0,
                    inserted=0,
                    updated=0,
                    unchanged=0,
                    failed=0,
                    steps_folded=0,
                    started_at=datetime.now(timezone.utc),
                )
            )
        return run_id

    def finish_run(self, run_id: uuid.UUID, status: str, error: str | None = None, **counts: int) -> None:
        """Record how a run ended, with its counts."""
        with self.engine.begin() as connection:
            connection.execute(
                update(IngestRunRow.__table__)
                .where(IngestRunRow.id == run_id)
                .values(status=status, error=error, finished_at=datetime.now(timezone.utc), **counts)
            )

    def watermark(self, source: str, system: str) -> datetime | None:
        """The end of the newest successful run's window: where the next nightly run resumes."""
        with self.engine.connect() as connection:
            return connection.scalar(
                select(func.max(IngestRunRow.window_end)).where(
                    IngestRunRow.source == source, IngestRunRow.system == system, IngestRunRow.status == "COMPLETED"
                )
            )
