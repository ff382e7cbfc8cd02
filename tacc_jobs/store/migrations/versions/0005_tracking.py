"""Tracking every job to its end: attempts (Slurm requeues), when a job went unseen, when its
submission started, and scheduler ids that may repeat (Slurm restarts its ids after a controller reset).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempt", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("unseen_since", UtcDateTime()))
        batch.add_column(sa.Column("submit_started_at", UtcDateTime()))
        batch.drop_constraint("uq_jobs_system_scheduler_job_id", type_="unique")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.create_unique_constraint("uq_jobs_system_scheduler_job_id", ["system", "scheduler_job_id"])
        batch.drop_column("submit_started_at")
        batch.drop_column("unseen_since")
        batch.drop_column("attempt")
