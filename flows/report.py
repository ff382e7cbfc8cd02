"""usage-report: cost and usage, and the metrics HPC centres report, as UI artifacts."""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from blocks.database import open_engine
from tacc_jobs.accounting import analytics, metrics
from tacc_jobs.accounting.chart import stacked_bar_chart
from tacc_jobs.settings import get_settings

Rows = list[dict[str, Any]]
TABLES = (
    ("by_team", "usage-cost-by-team", "Cost by team"),
    ("by_model", "usage-cost-by-model", "Cost by model"),
    ("by_user", "usage-user-metrics", "Per-user metrics"),
    ("by_week", "usage-by-week", "GPU-hours, SUs and cost by week and team (jobs spanning weeks split in proportion)"),
    ("wait_by_queue_week", "usage-wait-by-queue-week", "Queue wait time (start - eligible) by queue and week"),
    ("wait_histogram", "usage-wait-histogram", "Queue wait-time histogram by queue"),
    ("time_efficiency", "usage-time-efficiency", "Time efficiency (used / requested wall time) by user and agent"),
    ("job_sizes", "usage-job-sizes", "Job sizes (GPUs per job)"),
    ("success_by_agent", "usage-success-by-agent", "Success rate by agent"),
    ("job_efficiency", "usage-job-efficiency", "CPU and memory efficiency per job (least CPU-efficient first)"),
)
"""(report field, artifact key, description) of each table artifact."""
CHARTS = (
    ("chart_path", "usage-daily-cost-chart", "Daily GPU cost by team"),
    ("wait_chart_path", "usage-wait-time-chart", "Queue wait time by queue (jobs per wait bucket)"),
)
"""(report field, artifact key, title) of each chart artifact."""


class UsageReport(BaseModel):
    """The report's figures."""

    start: datetime
    end: datetime
    by_team: Rows
    by_model: Rows
    by_user: Rows
    by_week: Rows
    wait_by_queue_week: Rows
    wait_histogram: Rows
    time_efficiency: Rows
    job_sizes: Rows
    success_by_agent: Rows
    job_efficiency: Rows
    chart_path: str
    wait_chart_path: str


@task(cache_policy=NO_CACHE)
def compute_usage(start: datetime, end: datetime) -> UsageReport:
    """Run the report's SQL and draw its charts.

    Example:
        ```python
        compute_usage(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 15, tzinfo=timezone.utc))
        ```
    """
    engine = open_engine()
    folder, span = get_settings().home / "reports", f"{start:%Y%m%d}-{end:%Y%m%d}"
    window = f"{start:%Y-%m-%d} to {end:%Y-%m-%d}"
    wait_histogram = metrics.wait_histogram(engine, start, end)
    daily_cost = stacked_bar_chart(
        analytics.usage_by_period(engine, start, end, "day"),
        "day",
        "team",
        "cost_usd",
        folder / f"daily-cost-{span}.png",
        f"Daily GPU cost by team, {window}",
        "cost (USD)",
    )
    wait_chart = stacked_bar_chart(
        wait_histogram,
        "wait",
        "queue",
        "jobs",
        folder / f"wait-time-{span}.png",
        f"Queue wait time (start - eligible), {window}",
        "jobs",
        [label for _, label in metrics.WAIT_BUCKETS],
    )
    return UsageReport(
        start=start,
        end=end,
        by_team=analytics.cost_by_team(engine, start, end),
        by_model=analytics.cost_by_model(engine, start, end),
        by_user=analytics.user_metrics(engine, start, end),
        by_week=analytics.usage_by_period(engine, start, end, "week"),
        wait_by_queue_week=metrics.wait_by_queue_and_week(engine, start, end),
        wait_histogram=wait_histogram,
        time_efficiency=metrics.time_efficiency(engine, start, end),
        job_sizes=metrics.job_sizes(engine, start, end),
        success_by_agent=metrics.success_by_agent(engine, start, end),
        job_efficiency=metrics.job_efficiency(engine, start, end),
        chart_path=str(daily_cost),
        wait_chart_path=str(wait_chart),
    )


@flow(name="usage-report")
def usage_report(start: datetime | None = None, end: datetime | None = None) -> UsageReport:
    """Usage and cost for `[start, end)` (default: the last 7 days) as Prefect artifacts: a table
    each for `TABLES` (cost by team, model and user; usage by week; wait time by queue and week
    and its histogram; time efficiency; job sizes; success by agent; CPU and memory efficiency),
    and PNG charts of daily cost by team and of the wait-time histogram.

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
    tables = report.model_dump(mode="json")
    for field, key, what in TABLES:
        create_table_artifact(table=tables[field], key=key, description=f"{what}, {window}")
    for field, key, title in CHARTS:
        path = getattr(report, field)
        with open(path, "rb") as handle:
            encoded = base64.b64encode(handle.read()).decode()
        create_markdown_artifact(
            key=key,
            markdown=f"## {title}, {window}\n\n![{title}](data:image/png;base64,{encoded})\n\nPNG: `{path}`\n",
            description=f"{title}, {window}",
        )
    return report
