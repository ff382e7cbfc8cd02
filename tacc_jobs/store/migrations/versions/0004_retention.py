"""Per-job retention (days) for the cleanup flow; NULL means the default TTL.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retention_days", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retention_days")
