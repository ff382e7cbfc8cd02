"""Packed allocations: the Slurm job name a packed allocation's members share (None for a job of
its own), the allocation's whole nodes (its charge is split among its members), and each
member's GPU-seconds (the share it is charged by).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("allocation_name", sa.String(64)))
        batch.add_column(sa.Column("allocation_nodes", sa.Integer()))
        batch.add_column(sa.Column("gpu_seconds", sa.Float()))
        batch.create_index("ix_jobs_allocation_name", ["allocation_name"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_allocation_name")
        batch.drop_column("gpu_seconds")
        batch.drop_column("allocation_nodes")
        batch.drop_column("allocation_name")
