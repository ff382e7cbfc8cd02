"""The SU ledger: each job's charge, kept when cleanup deletes the job, so budgets keep counting
it; filled from the jobs charged so far.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "su_charges",
        sa.Column("job_id", sa.Uuid(), primary_key=True),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("su", sa.Float(), nullable=False),
        sa.Column("charged_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_su_charges_user_id_charged_at", "su_charges", ["user_id", "charged_at"])
    op.execute(
        "INSERT INTO su_charges (job_id, user_id, system, su, charged_at)"
        " SELECT id, user_id, system, charged_su, COALESCE(completed_at, updated_at) FROM jobs"
        " WHERE charged_su IS NOT NULL"
    )


def downgrade() -> None:
    op.drop_table("su_charges")
