"""Dataset staging status and transfer history (for bandwidth estimates).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dataset_stagings",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("system", sa.String(16), nullable=False),
        sa.Column("dataset_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text()),
        sa.Column("priority", sa.String(8), nullable=False),
        sa.Column("path", sa.Text()),
        sa.Column("digest", sa.String(64)),
        sa.Column("files", sa.Integer()),
        sa.Column("bytes", sa.BigInteger()),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("requested_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime()),
        sa.Column("finished_at", UtcDateTime()),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.UniqueConstraint("system", "dataset_id", name="uq_dataset_stagings_system_dataset_id"),
    )
    op.create_index("ix_dataset_stagings_system_status", "dataset_stagings", ["system", "status"])
    op.create_table(
        "transfers",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("finished_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_transfers_host_finished_at", "transfers", ["host", "finished_at"])


def downgrade() -> None:
    op.drop_table("transfers")
    op.drop_table("dataset_stagings")
