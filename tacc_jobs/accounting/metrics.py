"""The metrics HPC centres report, computed in SQL: queue wait time, time efficiency, job sizes,
success rates, CPU and memory efficiency.

Wait time is start minus eligible time (submit time resets on requeue; each attempt waited on
its own). Job sizes, success rates and efficiencies count final attempts; weeks start on
Monday 00:00 UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Engine, and_, case, cast, func, select
from sqlalchemy.sql import ColumnElement

from tacc_jobs.accounting.analytics import (
    MONDAY,
    PERIOD_SECONDS,
    final,
    final_jobs,
    rounded,
    rows,
    usage,
    when,
    within,
)
from tacc_jobs.accounting.sqltime import epoch

WAIT_BUCKETS = (
    (0, "< 1 min"),
    (60, "1-10 min"),
    (600, "10-60 min"),
    (3600, "1-4 h"),
    (4 * 3600, "4-12 h"),
    (12 * 3600, "12-24 h"),
    (24 * 3600, ">= 24 h"),
)
"""Wait-time histogram buckets: (lower bound in seconds, label)."""
SIZE_BUCKETS = ((0, "0"), (1, "1"), (2, "2"), (3, "3-4"), (5, "5-8"), (9, "9-16"), (17, "17-64"), (65, "65+"))
"""Job-size buckets: (fewest GPUs, label)."""
FAILED_STATES = ("failed", "node_fail", "out_of_memory", "boot_fail", "deadline")
wait_seconds = epoch(usage.c.start_time) - epoch(usage.c.eligible_time)


def _bucket(
    value: ColumnElement[Any], buckets: tuple[tuple[int, str], ...]
) -> tuple[ColumnElement[str], ColumnElement[int]]:
    """The label of the bucket `value` falls in, and the bucket's position (to order by)."""
    ordered = list(enumerate(buckets))[::-1]
    label = case(*((value >= lower, name) for _, (lower, name) in ordered[:-1]), else_=buckets[0][1])
    position = case(*((value >= lower, index) for index, (lower, _) in ordered[:-1]), else_=0)
    return label, position


def _waited(start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [*within(when, start, end), usage.c.eligible_time.is_not(None)]


def wait_by_queue_and_week(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per queue and week (of the start): attempts that started in `[start, end)`, their average
    and longest wait (start minus eligible time), in minutes.

    Example:
        ```python
        wait_by_queue_and_week(engine, datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 15, tzinfo=timezone.utc))
        # [{"queue": "gpu-a100", "week": date(2026, 10, 26), "jobs": 12, "avg_wait_minutes": 41.5, "max_wait_minutes": 180.0}, ...]
        ```
    """
    week = (cast(epoch(when), BigInteger) - int(MONDAY.timestamp())) // PERIOD_SECONDS["week"]
    query = (
        select(
            usage.c.partition.label("queue"),
            week.label("week"),
            func.count().label("jobs"),
            rounded(func.avg(wait_seconds) / 60.0, 1).label("avg_wait_minutes"),
            rounded(func.max(wait_seconds) / 60.0, 1).label("max_wait_minutes"),
        )
        .where(*_waited(start, end))
        .group_by(usage.c.partition, week)
        .order_by(usage.c.partition, week)
    )
    return [
        {
            **row,
            "week": datetime.fromtimestamp(
                MONDAY.timestamp() + row["week"] * PERIOD_SECONDS["week"], timezone.utc
            ).date(),
        }
        for row in rows(engine, query)
    ]


def wait_histogram(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per queue, how many attempts that started in `[start, end)` waited how long (`WAIT_BUCKETS`).

    Example:
        ```python
        wait_histogram(engine, start, end)  # [{"queue": "gpu-a100", "wait": "< 1 min", "jobs": 7}, ...]
        ```
    """
    label, position = _bucket(wait_seconds, WAIT_BUCKETS)
    query = (
        select(usage.c.partition.label("queue"), label.label("wait"), func.count().label("jobs"))
        .where(*_waited(start, end))
        .group_by(usage.c.partition, label, position)
        .order_by(usage.c.partition, position)
    )
    return rows(engine, query)


def time_efficiency(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per user and agent, of the jobs (final attempts) that ran and started in `[start, end)`:
    hours used over hours requested (wall time), overall and on average per job, so a planner
    can tell who asks for far more wall time than they use.

    Example:
        ```python
        time_efficiency(engine, start, end)
        # [{"user": "jdoe", "agent": "AlphaCal", "jobs": 5, "used_hours": 3.2, "requested_hours": 20.0,
        #   "time_used_pct": 16.0, "avg_job_time_used_pct": 18.3}, ...]
        ```
    """
    limit = usage.c.time_limit_seconds
    query = (
        select(
            usage.c.user_name.label("user"),
            usage.c.model_name.label("agent"),
            func.count().label("jobs"),
            rounded(func.sum(usage.c.elapsed_seconds) / 3600.0, 3).label("used_hours"),
            rounded(func.sum(limit) / 3600.0, 3).label("requested_hours"),
            rounded(100.0 * func.sum(usage.c.elapsed_seconds) / func.sum(limit), 1).label("time_used_pct"),
            rounded(func.avg(100.0 * usage.c.elapsed_seconds / limit), 1).label("avg_job_time_used_pct"),
        )
        .where(*within(when, start, end), final, limit > 0)
        .group_by(usage.c.user_name, usage.c.model_name)
        .order_by(usage.c.user_name, usage.c.model_name)
    )
    return rows(engine, query)


def job_sizes(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """How many jobs (final attempts that started in `[start, end)`) had how many GPUs
    (`SIZE_BUCKETS`), with their GPU-hours.

    Example:
        ```python
        job_sizes(engine, start, end)  # [{"gpus": "1", "jobs": 40, "gpu_hours": 55.2}, {"gpus": "3-4", ...}, ...]
        ```
    """
    label, position = _bucket(usage.c.gpu_count, SIZE_BUCKETS)
    query = (
        select(
            label.label("gpus"), func.count().label("jobs"), rounded(func.sum(usage.c.gpu_hours), 3).label("gpu_hours")
        )
        .where(*within(when, start, end), final)
        .group_by(label, position)
        .order_by(position)
    )
    return rows(engine, query)


def success_by_agent(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per agent, of the jobs that ended in `[start, end)`: how many completed, failed, timed out
    or were cancelled, the success rate, and how many attempts were requeued on the way.

    Example:
        ```python
        success_by_agent(engine, start, end)
        # [{"agent": "AlphaCal", "jobs": 9, "completed": 7, "failed": 1, "timeout": 1, "cancelled": 0,
        #   "success_rate_pct": 77.8, "requeued_attempts": 2}, ...]
        ```
    """

    def finals_in(*states: str) -> ColumnElement[int]:
        return func.coalesce(func.sum(case((and_(final, usage.c.status.in_(states)), 1), else_=0)), 0)

    query = (
        select(
            usage.c.model_name.label("agent"),
            final_jobs().label("jobs"),
            finals_in("completed").label("completed"),
            finals_in(*FAILED_STATES).label("failed"),
            finals_in("timeout").label("timeout"),
            finals_in("cancelled").label("cancelled"),
            rounded(100.0 * finals_in("completed") / func.nullif(final_jobs(), 0), 1).label("success_rate_pct"),
            func.coalesce(func.sum(case((final, 0), else_=1)), 0).label("requeued_attempts"),
        )
        .where(*within(usage.c.end_time, start, end))
        .group_by(usage.c.model_name)
        .order_by(usage.c.model_name)
    )
    return rows(engine, query)


def job_efficiency(engine: Engine, start: datetime, end: datetime, limit: int = 100) -> list[dict[str, Any]]:
    """CPU and memory efficiency of the jobs that ended in `[start, end)` where sacct measured
    their steps (TRESUsageInTot), least CPU-efficient first: CPU time over allocated CPUs x
    elapsed, and peak memory (the largest MaxRSS of any step) over the memory of one node.

    Example:
        ```python
        job_efficiency(engine, start, end, limit=20)
        # [{"system": "ls6", "job_id": "123", "user": "jdoe", "agent": "AlphaCal", "cpus": 128, "elapsed_hours": 2.0,
        #   "cpu_efficiency_pct": 3.9, "max_rss_gb": 40.0, "memory_efficiency_pct": 16.0}, ...]
        ```
    """
    cpu_efficiency = rounded(100.0 * usage.c.cpu_seconds / (usage.c.cpus * usage.c.elapsed_seconds), 1)
    query = (
        select(
            usage.c.system,
            usage.c.job_id,
            usage.c.user_name.label("user"),
            usage.c.model_name.label("agent"),
            usage.c.cpus,
            rounded(usage.c.elapsed_seconds / 3600.0, 3).label("elapsed_hours"),
            cpu_efficiency.label("cpu_efficiency_pct"),
            rounded(usage.c.max_rss_bytes / 2.0**30, 3).label("max_rss_gb"),
            rounded(100.0 * usage.c.max_rss_bytes * usage.c.nodes / func.nullif(usage.c.mem_bytes, 0), 1).label(
                "memory_efficiency_pct"
            ),
        )
        .where(
            *within(usage.c.end_time, start, end),
            final,
            usage.c.cpu_seconds.is_not(None),
            usage.c.cpus > 0,
            usage.c.elapsed_seconds > 0,
        )
        .order_by(cpu_efficiency, usage.c.system, usage.c.job_id)
        .limit(limit)
    )
    return rows(engine, query)
