"""usage-report: cost by team and by model, per-user metrics, and a chart, as UI artifacts."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.database import open_engine
from tacc_jobs.accounting import analytics
from tacc_jobs.accounting.chart import daily_cost_chart
from tacc_jobs.settings import get_settings


class UsageReport(BaseModel):
    """The report's figures."""

    start: datetime
    end: datetime
    by_team: list[dict[str, object]]
    by_model: list[dict[str, object]]
    by_user: list[dict[str, object]]
    chart_path: str


@task(cache_policy=NO_CACHE)
def compute_usage(start: datetime, end: datetime) -> UsageReport:
    """Run the report's SQL and draw its chart.

    Example:
        ```python
        compute_usage(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 15, tzinfo=timezone.utc))
        ```
    """
    engine = open_engine()
    chart = daily_cost_chart(
        analytics.daily_cost_by_team(engine, start, end),
        get_settings().home / "reports" / f"daily-cost-{start:%Y%m%d}-{end:%Y%m%d}.png",
        f"Daily GPU cost by team, {start:%Y-%m-%d} to {end:%Y-%m-%d}",
    )
    return UsageReport(start=start, end=end, by_team=analytics.cost_by_team(engine, start, end),
                       by_model=analytics.cost_by_model(engine, start, end), by_user=analytics.user_metrics(engine, start, end),
                       chart_path=str(chart))


@flow(name="usage-report")
def usage_report(start: datetime | None = None, end: datetime | None = None) -> UsageReport:
    """Usage and cost for `[start, end)` (default: the last 7 days) as Prefect artifacts: tables
    of cost by team, cost by model and per-user metrics, and a PNG chart of daily cost by team.

    Example:
        ```python
        from flows.report import usage_report
        usage_report(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 15, tzinfo=timezone.utc))
        ```
    """
    end = end or datetime.now(timezone.utc)
    start = start or end - timedelta(days=7)
    report = compute_usage(start, end)
    window = f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    for key, rows, what in (("usage-cost-by-team", report.by_team, "Cost by team"),
                            ("usage-cost-by-model", report.by_model, "Cost by model"),
                            ("usage-user-metrics", report.by_user, "Per-user metrics")):
        create_table_artifact(table=rows, key=key, description=f"{what}, {window}")
    with open(report.chart_path, "rb") as handle:
        encoded = base64.b64encode(handle.read()).decode()
    create_markdown_artifact(
        key="usage-daily-cost-chart",
        markdown=f"## Daily GPU cost by team, {window}\n\n![daily cost by team](data:image/png;base64,{encoded})\n\n"
                 f"PNG: `{report.chart_path}`\n",
        description=f"Daily cost by team, {window}",
    )
    return report
