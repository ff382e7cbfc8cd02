"""Usage and cost analytics, computed in SQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, Float, Numeric, case, cast, func, select
from sqlalchemy.sql import ColumnElement

from tacc_jobs.store.tables import JobUsageRow, TeamRow

usage = JobUsageRow.__table__
when = usage.c.start_time  # usage counts jobs that ran; one that never started cost nothing


class UsagePage(BaseModel):
    """One page of accounted jobs."""

    items: list[dict[str, Any]]
    total: int
    has_more: bool


def _round(expression: ColumnElement[Any], digits: int) -> ColumnElement[float]:
    """Round on every backend (PostgreSQL rounds numerics, not doubles), returned as a float."""
    return cast(func.round(cast(expression, Numeric), digits), Float)


def _window(start: datetime, end: datetime) -> list[ColumnElement[bool]]:
    return [when >= start, when < end]


def _totals() -> list[ColumnElement[Any]]:
    return [
        func.count().label("jobs"),
        _round(func.sum(usage.c.gpu_hours), 3).label("gpu_hours"),
        _round(func.coalesce(func.sum(usage.c.su_charged), 0), 3).label("su"),
        _round(func.sum(usage.c.cost_usd), 2).label("cost_usd"),
    ]


def _rows(engine: Engine, query: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(query)]


def cost_by_team(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Jobs, GPU-hours, SUs and dollars per team in `[start, end)`, with budget use, costliest first."""
    cost = func.sum(usage.c.cost_usd)
    query = (
        select(usage.c.team_name.label("team"), *_totals(), TeamRow.budget_usd.label("budget_usd"),
               _round(100 * cost / TeamRow.budget_usd, 1).label("budget_used_pct"))
        .select_from(usage.outerjoin(TeamRow.__table__, TeamRow.name == usage.c.team_name))
        .where(*_window(start, end))
        .group_by(usage.c.team_name, TeamRow.budget_usd)
        .order_by(cost.desc())
    )
    return _rows(engine, query)


def cost_by_model(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Jobs, GPU-hours, SUs and dollars per model (agent) in `[start, end)`, costliest first."""
    query = (select(usage.c.model_name.label("model"), *_totals()).where(*_window(start, end))
             .group_by(usage.c.model_name).order_by(func.sum(usage.c.cost_usd).desc()))
    return _rows(engine, query)


def user_metrics(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Per user: jobs, success rate, average runtime, GPU-hours, SUs and dollars."""
    completed = func.sum(case((usage.c.status == "completed", 1), else_=0))
    query = (
        select(
            usage.c.user_name.label("user"), *_totals(),
            _round(100.0 * completed / func.count(), 1).label("success_rate_pct"),
            _round(func.avg(usage.c.elapsed_seconds) / 60.0, 1).label("avg_runtime_minutes"),
        )
        .where(*_window(start, end))
        .group_by(usage.c.user_name)
        .order_by(func.sum(usage.c.cost_usd).desc())
    )
    return _rows(engine, query)


def daily_cost_by_team(engine: Engine, start: datetime, end: datetime) -> list[dict[str, Any]]:
    """Dollars per day and team, for the chart."""
    day = func.date(when).label("day")
    query = (select(day, usage.c.team_name.label("team"), _round(func.sum(usage.c.cost_usd), 2).label("cost_usd"))
             .where(*_window(start, end)).group_by(day, usage.c.team_name).order_by(day))
    return _rows(engine, query)


def list_usage(
    engine: Engine, *, team: str | None = None, status: str | None = None, provider: str | None = None,
    system: str | None = None, limit: int = 50, offset: int = 0,
) -> UsagePage:
    """Accounted jobs matching every given filter, newest first, one page at a time."""
    if not 1 <= limit <= 1000 or offset < 0:
        raise ValueError("limit must be 1-1000 and offset >= 0")
    filters = [column == value for column, value in ((usage.c.team_name, team), (usage.c.status, status),
                                                     (usage.c.provider, provider), (usage.c.system, system)) if value is not None]
    with engine.connect() as connection:
        total = connection.scalar(select(func.count()).select_from(usage).where(*filters)) or 0
        rows = connection.execute(
            select(usage).where(*filters).order_by(when.desc(), usage.c.system, usage.c.job_id).offset(offset).limit(limit)
        )
        items = [dict(row._mapping) for row in rows]
    return UsagePage(items=items, total=total, has_more=offset + len(items) < total)
