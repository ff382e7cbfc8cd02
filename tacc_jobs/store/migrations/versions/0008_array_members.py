"""Job arrays: each member's task index in the array named by its `allocation_name` (None for a
packed member or a job of its own).

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("array_index", sa.Integer()))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("array_index")
