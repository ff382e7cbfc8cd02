"""The jobs table.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("agent", sa.String(64), nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("scheduler_job_id", sa.String(64)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("result", sa.JSON()),
        sa.Column("notes", sa.Text()),
        sa.Column("estimated_runtime_minutes", sa.Float()),
        sa.Column("estimated_su", sa.Float()),
        sa.Column("charged_su", sa.Float()),
        sa.Column("gpu_count", sa.Integer(), nullable=False),
        sa.Column("nodes", sa.Integer(), nullable=False),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("webhook_url", sa.Text()),
        sa.Column("work_dir", sa.Text()),
        sa.Column("flow_run_id", sa.Uuid()),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("completed_at", UtcDateTime()),
        sa.UniqueConstraint("system", "scheduler_job_id", name="uq_jobs_system_scheduler_job_id"),
    )
    op.create_index("ix_jobs_user_id_created_at", "jobs", ["user_id", "created_at"])
    op.create_index("ix_jobs_status_created_at", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_scheduler_job_id", "jobs", ["scheduler_job_id"])
    op.create_index("ix_jobs_flow_run_id", "jobs", ["flow_run_id"])


def downgrade() -> None:
    op.drop_table("jobs")
