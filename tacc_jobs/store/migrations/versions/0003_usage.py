"""Teams, accounted job usage, the quarantine of bad input rows, ingestion runs.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "teams",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(128), nullable=False, unique=True),
        sa.Column("description", sa.Text()),
        sa.Column("budget_usd", sa.Float()),
    )
    op.create_table(
        "job_usage",
        sa.Column("system", sa.String(32), primary_key=True),
        sa.Column("job_id", sa.String(64), primary_key=True),
        sa.Column("job_name", sa.Text()),
        sa.Column("user_name", sa.String(64)),
        sa.Column("account", sa.String(64)),
        sa.Column("team_name", sa.String(128)),
        sa.Column("model_name", sa.String(128)),
        sa.Column("provider", sa.String(32)),
        sa.Column("gpu_type", sa.String(32)),
        sa.Column("partition", sa.String(64)),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("exit_code", sa.String(16)),
        sa.Column("submit_time", UtcDateTime()),
        sa.Column("start_time", UtcDateTime()),
        sa.Column("end_time", UtcDateTime()),
        sa.Column("elapsed_seconds", sa.BigInteger(), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("gpu_hours", sa.Float(), nullable=False),
        sa.Column("su_charged", sa.Float()),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("run_id", sa.Uuid()),
        sa.Column("ingested_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_job_usage_start_time", "job_usage", ["start_time"])
    op.create_table(
        "usage_quarantine",
        sa.Column("id", BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Uuid()),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
    )
    op.create_table(
        "ingest_runs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("system", sa.String(32), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("rows_read", sa.BigInteger(), nullable=False),
        sa.Column("inserted", sa.BigInteger(), nullable=False),
        sa.Column("updated", sa.BigInteger(), nullable=False),
        sa.Column("unchanged", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("steps_folded", sa.BigInteger(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=False),
        sa.Column("finished_at", UtcDateTime()),
        sa.Column("error", sa.Text()),
    )
    op.create_index("ix_ingest_runs_source_system_finished_at", "ingest_runs", ["source", "system", "finished_at"])


def downgrade() -> None:
    for table in ("ingest_runs", "usage_quarantine", "job_usage", "teams"):
        op.drop_table(table)
