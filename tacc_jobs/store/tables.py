"""SQLAlchemy 2 table definitions of the job store (the schema Alembic migrates to)."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite keeps none of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use timezone-aware UTC")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of the job store's tables."""


class JobRow(Base):
    """One job: what was asked, how it was planned, and where it got to."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_scheduler_job_id", "scheduler_job_id"),
        Index("ix_jobs_flow_run_id", "flow_run_id"),
        Index("ix_jobs_allocation_name", "allocation_name"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    user_id: Mapped[str] = mapped_column(String(64))
    agent: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(128))
    system: Mapped[str] = mapped_column(String(16))
    queue: Mapped[str] = mapped_column(String(32))
    scheduler_job_id: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    notes: Mapped[str | None] = mapped_column(Text)
    estimated_runtime_minutes: Mapped[float | None] = mapped_column(Float)
    estimated_su: Mapped[float | None] = mapped_column(Float)
    charged_su: Mapped[float | None] = mapped_column(Float)
    gpu_count: Mapped[int] = mapped_column(Integer)
    nodes: Mapped[int] = mapped_column(Integer)
    priority: Mapped[str] = mapped_column(String(8), default="normal")
    webhook_url: Mapped[str | None] = mapped_column(Text)
    work_dir: Mapped[str | None] = mapped_column(Text)
    flow_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    retention_days: Mapped[int | None] = mapped_column(Integer)
    attempt: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    unseen_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    submit_started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    allocation_name: Mapped[str | None] = mapped_column(String(64))
    allocation_nodes: Mapped[int | None] = mapped_column(Integer)
    array_index: Mapped[int | None] = mapped_column(Integer)
    gpu_seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SuChargeRow(Base):
    """One job's charge in SUs, dated by the job's end: the budget ledger, which outlives the job's
    record (cleanup deletes records, never charges)."""

    __tablename__ = "su_charges"
    __table_args__ = (Index("ix_su_charges_user_id_charged_at", "user_id", "charged_at"),)

    job_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[str] = mapped_column(String(64))
    system: Mapped[str] = mapped_column(String(16))
    su: Mapped[float] = mapped_column(Float)
    charged_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DatasetStagingRow(Base):
    """Where one dataset stands on one system: QUEUED, STAGING, STAGED or FAILED."""

    __tablename__ = "dataset_stagings"
    __table_args__ = (
        UniqueConstraint("system", "dataset_id", name="uq_dataset_stagings_system_dataset_id"),
        Index("ix_dataset_stagings_system_status", "system", "status"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    system: Mapped[str] = mapped_column(String(16))
    dataset_id: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(String(8))
    path: Mapped[str | None] = mapped_column(Text)
    digest: Mapped[str | None] = mapped_column(String(64))
    files: Mapped[int | None] = mapped_column(Integer)
    bytes: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    requested_at: Mapped[datetime] = mapped_column(UtcDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TransferRow(Base):
    """One finished transfer to a host: how many bytes in how many seconds."""

    __tablename__ = "transfers"
    __table_args__ = (Index("ix_transfers_host_finished_at", "host", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    host: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    seconds: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[datetime] = mapped_column(UtcDateTime)


class TeamRow(Base):
    """A team that GPU usage is accounted to, with its budget."""

    __tablename__ = "teams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    budget_usd: Mapped[float | None] = mapped_column(Float)


class JobUsageRow(Base):
    """One accounted job attempt (from sacct, a file or an HTTP feed), with its cost.

    Keyed by (system, job id, submit time): a reused job id, or another attempt of a requeued
    job, is another row. `final_attempt` is false for an attempt a requeue superseded.
    """

    __tablename__ = "job_usage"
    __table_args__ = (Index("ix_job_usage_start_time", "start_time"),)

    system: Mapped[str] = mapped_column(String(32), primary_key=True)
    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    submit_time: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    job_name: Mapped[str | None] = mapped_column(Text)
    user_name: Mapped[str | None] = mapped_column(String(64))
    account: Mapped[str | None] = mapped_column(String(64))
    team_name: Mapped[str | None] = mapped_column(String(128))
    model_name: Mapped[str | None] = mapped_column(String(128))
    provider: Mapped[str | None] = mapped_column(String(32))
    gpu_type: Mapped[str | None] = mapped_column(String(32))
    partition: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    exit_code: Mapped[str | None] = mapped_column(String(16))
    eligible_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime)
    elapsed_seconds: Mapped[int] = mapped_column(BigInteger)
    time_limit_seconds: Mapped[int | None] = mapped_column(BigInteger)
    nodes: Mapped[int] = mapped_column(Integer)
    gpu_count: Mapped[int] = mapped_column(Integer)
    cpus: Mapped[int | None] = mapped_column(Integer)
    mem_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    max_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    gpu_hours: Mapped[float] = mapped_column(Float)
    su_charged: Mapped[float | None] = mapped_column(Float)
    cost_usd: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String(16))
    final_attempt: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    ingested_at: Mapped[datetime] = mapped_column(UtcDateTime)


class QuarantineRow(Base):
    """An input row that could not be ingested, kept with the reason."""

    __tablename__ = "usage_quarantine"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    source: Mapped[str] = mapped_column(String(16))
    raw: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class IngestRunRow(Base):
    """One ingestion run: its window (the watermark), counts and outcome."""

    __tablename__ = "ingest_runs"
    __table_args__ = (Index("ix_ingest_runs_source_system_finished_at", "source", "system", "finished_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    source: Mapped[str] = mapped_column(String(16))
    system: Mapped[str] = mapped_column(String(32))
    window_start: Mapped[datetime] = mapped_column(UtcDateTime)
    window_end: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16))
    rows_read: Mapped[int] = mapped_column(BigInteger, default=0)
    inserted: Mapped[int] = mapped_column(BigInteger, default=0)
    updated: Mapped[int] = mapped_column(BigInteger, default=0)
    unchanged: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    steps_folded: Mapped[int] = mapped_column(BigInteger, default=0)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    error: Mapped[str | None] = mapped_column(Text)
