"""Usage and cost analytics, computed in SQL.

Every attempt of a requeued job is charged, so GPU-hours, SUs and dollars sum every attempt;
job counts and success rates count final attempts only. Days and weeks (Monday to Monday) are UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import (
    Engine,
    Float,
    Numeric,
    and_,
    case,
    cast,
    func,
    literal,
    or_,
    select,
    union_all,
)
from sqlalchemy.sql import ColumnElement

from tacc_jobs.accounting.sqltime import epoch, greatest, least
from tacc_jobs.store.tables import JobUsageRow, TeamRow

usage = JobUsageRow.__table__
when = usage.c.start_time  # usage counts jobs that ran; one that never started cost nothing
final = usage.c.final_attempt
PERIOD_SECONDS = {"day": 86400, "week": 7 * 86400}
MONDAY = datetime(1970, 1, 5, tzinfo=timezone.utc)


class UsagePage(BaseModel):
    """One page of accounted jobs."""

    items: list[dict[str, Any]]
    total: int
    has_more: bool


def rounded(expression: ColumnElement[Any], digits: int) -> ColumnElement[float]:
    """Round on every backend (PostgreSQL rounds numerics, not doubles), returned as a float.

    Example:
        ```python
        select(rounded(func.avg(usage.c.gpu_hours), 3).label("avg_gpu_hours"))
        ```
    """
    return cast(func.round(cast(expression, Numeric), digits), Float)


def within(column: ColumnElement[Any], start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    """`column` in `[start, end)`, as conditions of a WHERE clause.

    Example:
        ```python
        select(func.count()).where(*within(usage.c.end_time, start, end))
        ```
    """
    return [column >= start, column < end]


def final_jobs() -> ColumnElement[int]:
    """How many final attempts (jobs) a group holds: requeued attempts are charged, not counted.

    Example:
        ```python
        select(usage.c.team_name, final_jobs().label("jobs")).group_by(usage.c.team_name)
        ```
    """
    return func.coalesce(func.sum(case((final, 1), else_=0)), 0)


def _totals() -> list[ColumnElement[Any]]:
    return [
        final_jobs().label("jobs"),
        rounded(func.sum(usage.c.gpu_hours), 3).label("gpu_hours"),
        rounded(func.coalesce(func.sum(usage.c.su_charged), 0), 3).label("su"),
        rounded(func.sum(usage.c.cost_usd), 2).label("cost_usd"),
    ]


def rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    """The rows of a query, as dicts.

    Example:
        ```python
        rows(engine, select(usage.c.job_id, usage.c.status).limit(5))  # [{"job_id": "123", "status": "completed"}, ...]
        ```
    """
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def cost_by_team(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Jobs, GPU-hours, SUs and dollars per team in `[start, end)`, with budget use, costliest first."""
    cost = func.sum(usage.c.cost_usd)
    query = (
        select(
            usage.c.team_name.label("team"),
            *_totals(),
            TeamRow.budget_usd.label("budget_usd"),
            rounded(100 * cost / TeamRow.budget_usd, 1).label("budget_used_pct"),
        )
        .select_from(usage.outerjoin(TeamRow.__table__, TeamRow.name == usage.c.team_name))
        .where(*within(when, start, end))
        .group_by(usage.c.team_name, TeamRow.budget_usd)
        .order_by(cost.desc())
    )
    return rows(engine, query)


def cost_by_model(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Jobs, GPU-hours, SUs and dollars per model (agent) in `[start, end)`, costliest first."""
    query = (
        select(usage.c.model_name.label("model"), *_totals())
        .where(*within(when, start, end))
        .group_by(usage.c.model_name)
        .order_by(func.sum(usage.c.cost_usd).desc())
    )
    return rows(engine, query)


def user_metrics(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per user: jobs, success rate, average runtime, GPU-hours, SUs and dollars."""
    completed = func.sum(case((and_(final, usage.c.status == "completed"), 1), else_=0))
    query = (
        select(
            usage.c.user_name.label("user"),
            *_totals(),
            rounded(100.0 * completed / func.nullif(final_jobs(), 0), 1).label("success_rate_pct"),
            rounded(func.avg(usage.c.elapsed_seconds) / 60.0, 1).label("avg_runtime_minutes"),
        )
        .where(*within(when, start, end))
        .group_by(usage.c.user_name)
        .order_by(func.sum(usage.c.cost_usd).desc())
    )
    return rows(engine, query)


def report_periods(start: datetime, end: datetime, period: Literal["day", "week"]) -> list[tuple[datetime, datetime]]:
    """The UTC days or weeks (from Monday) that `[start, end)` overlaps, each cut to the window.

    Example:
        >>> [f"{a:%a %d %H:%M}-{b:%a %d %H:%M}" for a, b in report_periods(
        ...     datetime(2026, 11, 4, 12, tzinfo=timezone.utc), datetime(2026, 11, 11, 12, tzinfo=timezone.utc), "week")]
        ['Wed 04 12:00-Mon 09 00:00', 'Mon 09 00:00-Wed 11 12:00']
    """
    step = timedelta(seconds=PERIOD_SECONDS[period])
    boundary = MONDAY + (start.astimezone(timezone.utc) - MONDAY) // step * step
    periods = []
    while boundary < end:
        periods.append((max(boundary, start), min(boundary + step, end)))
        boundary += step
    return periods


def usage_by_period(
    engine: Engine, start: datetime, end: datetime, period: Literal["day", "week"]
) -> list[dict[str, Any]]:
    """GPU-hours, SUs and dollars per team and period (`report_periods`), a job that spans
    periods split between them in proportion to its time in each (as XDMoD does): a job running
    over midnight counts in both days. A running job counts up to its elapsed time.

    Example:
        ```python
        usage_by_period(engine, datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 15, tzinfo=timezone.utc), "week")
        ```
    """
    spans = [
        select(literal(a.timestamp()).label("p_start"), literal(b.timestamp()).label("p_end"))
        for a, b in report_periods(start, end, period)
    ]
    if not spans:
        return []
    periods = union_all(*spans).subquery("periods")
    job_start = epoch(usage.c.start_time)
    job_end = func.coalesce(epoch(usage.c.end_time), job_start + usage.c.elapsed_seconds)
    overlap = greatest(least(job_end, periods.c.p_end) - greatest(job_start, periods.c.p_start), 0.0)
    instant = and_(job_end == job_start, job_start >= periods.c.p_start)
    share = case((job_end > job_start, overlap / (job_end - job_start)), (instant, 1.0), else_=0.0)
    query = (
        select(
            periods.c.p_start,
            usage.c.team_name.label("team"),
            rounded(func.sum(usage.c.gpu_hours * share), 3).label("gpu_hours"),
            rounded(func.sum(func.coalesce(usage.c.su_charged, 0) * share), 3).label("su"),
            rounded(func.sum(usage.c.cost_usd * share), 2).label("cost_usd"),
        )
        .select_from(usage.join(periods, and_(job_start < periods.c.p_end, or_(job_end > periods.c.p_start, instant))))
        .where(when < end, when.is_not(None))
        .group_by(periods.c.p_start, usage.c.team_name)
        .order_by(periods.c.p_start, usage.c.team_name)
    )
    return [
        {period: datetime.fromtimestamp(row.pop("p_start"), timezone.utc).date(), **row} for row in rows(engine, query)
    ]


def list_usage(
    engine: Engine,
    *,
    team: str | None = None,
    status: str | None = None,
    provider: str | None = None,
    system: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> UsagePage:
    """Accounted jobs matching every given filter, newest first, one page at a time."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise ValueError("limit must be 1-1000 and offset >= 0")
    filters = [
        column == value
        for column, value in (
            (usage.c.team_name, team),
            (usage.c.status, status),
            (usage.c.provider, provider),
            (usage.c.system, system),
        )
        if value is not None
    ]
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(usage).where(*filters)) or 0
        page = connection.execute(
            select(usage)
            .where(*filters)
            .order_by(when.desc(), usage.c.system, usage.c.job_id)
            .offset(offset)
            .limit(limit)
        )
        items = [dict(row._mapping) for row in page]
    return UsagePage(items=items, total=total, has_more=offset + len(items) < total)
