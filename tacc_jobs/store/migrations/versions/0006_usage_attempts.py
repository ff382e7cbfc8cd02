"""job_usage keyed by (system, job id, submit time): reused job ids and the attempts of requeued
jobs are rows of their own, the final attempt marked; eligible time, time limit, CPUs, memory and
their use for the wait-time and efficiency metrics.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

from tacc_jobs.store.tables import UtcDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def added() -> list[sa.Column]:
    return [
        sa.Column("eligible_time", UtcDateTime()),
        sa.Column("time_limit_seconds", sa.BigInteger()),
        sa.Column("cpus", sa.Integer()),
        sa.Column("mem_bytes", sa.BigInteger()),
        sa.Column("cpu_seconds", sa.Float()),
        sa.Column("max_rss_bytes", sa.BigInteger()),
        sa.Column("final_attempt", sa.Boolean(), nullable=False, server_default=sa.true()),
    ]


def rebuild(primary_key: list[str], new: list[sa.Column], dropped: set[str], submit_time: str, where: str = "") -> None:
    """Copy job_usage, as it is now less `dropped` plus `new`, into a table with `primary_key`
    (a primary key cannot change in place on SQLite)."""
    current = sa.Table("job_usage", sa.MetaData(), autoload_with=op.get_bind())
    kept = [column for column in current.columns if column.name not in dropped]
    columns = [sa.Column(column.name, column.type, nullable=column.name not in primary_key and (column.nullable or column.name == "submit_time"))
               for column in kept]
    op.create_table("job_usage_rebuilt", *columns, *new, sa.PrimaryKeyConstraint(*primary_key))
    copied = ", ".join(column.name for column in kept if column.name != "submit_time")
    op.execute(f"INSERT INTO job_usage_rebuilt ({copied}, submit_time) SELECT {copied}, {submit_time} FROM job_usage AS usage {where}")
    op.drop_index("ix_job_usage_start_time", "job_usage")
    op.drop_table("job_usage")
    op.rename_table("job_usage_rebuilt", "job_usage")
    op.create_index("ix_job_usage_start_time", "job_usage", ["start_time"])


def upgrade() -> None:
    rebuild(["system", "job_id", "submit_time"], added(), set(), "COALESCE(submit_time, start_time, end_time, ingested_at)")


def downgrade() -> None:
    # (system, job id) holds one row again: the newest attempt of each job
    rebuild(["system", "job_id"], [], {column.name for column in added()}, "submit_time",
            "WHERE NOT EXISTS (SELECT 1 FROM job_usage AS newer WHERE newer.system = usage.system "
            "AND newer.job_id = usage.job_id AND newer.submit_time > usage.submit_time)")
