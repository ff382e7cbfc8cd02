"""The metrics HPC centres report (issue 14), computed in SQL on SQLite and PostgreSQL from
sacct text, and the weekly report's artifacts."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.report import CHARTS, TABLES, usage_report
from tacc_jobs.accounting import analytics, metrics
from tacc_jobs.accounting.warehouse import Warehouse
from tests.test_sacct_cases import ingest

WEEKS = (datetime(2026, 11, 2, tzinfo=timezone.utc), datetime(2026, 11, 16, tzinfo=timezone.utc))

# 9101 runs over midnight Sunday into the next week; 9102 has measured steps; 9104 was requeued.
JOBS = """\
9101|jdoe|ai-platform|gpu-a100|COMPLETED|0:0|2026-11-08T19:00:00|2026-11-08T20:00:00|2026-11-08T22:00:00|2026-11-09T02:00:00|04:00:00|08:00:00|1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||AlphaCal
9102|jdoe|ml-research|gpu-h100|FAILED|1:0|2026-11-03T10:00:00|2026-11-03T10:00:00|2026-11-03T10:00:30|2026-11-03T11:00:30|01:00:00|02:00:00|1|billing=96,cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|||AlphaCal
9102.batch||ml-research||FAILED|1:0|2026-11-03T10:00:30|2026-11-03T10:00:30|2026-11-03T10:00:30|2026-11-03T11:00:30|01:00:00||1|cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|cpu=04:00:00,energy=0,fs/disk=2386,mem=10G,pages=0,vmem=11G|10G|batch
9102.0||ml-research||FAILED|1:0|2026-11-03T10:00:31|2026-11-03T10:00:31|2026-11-03T10:00:31|2026-11-03T11:00:30|00:59:59||1|cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|cpu=20:00:00,energy=0,fs/disk=9120,mem=60G,pages=0,vmem=61G|30G|python
9103|asmith|data-science|gpu-a100|COMPLETED|0:0|2026-11-04T00:00:00|2026-11-04T00:00:00|2026-11-04T05:00:00|2026-11-04T06:00:00|01:00:00|04:00:00|2|billing=256,cpu=256,gres/gpu:a100=6,gres/gpu=6,mem=500G,node=2|||sweep
9104|asmith|data-science|gpu-a100|PREEMPTED|0:0|2026-11-05T08:00:00|2026-11-05T08:00:00|2026-11-05T08:00:10|2026-11-05T09:00:10|01:00:00|02:00:00|1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||sweep
9104|asmith|data-science|gpu-a100|TIMEOUT|0:0|2026-11-05T09:00:15|2026-11-05T09:02:16|2026-11-05T09:02:16|2026-11-05T11:02:16|02:00:00|02:00:00|1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||sweep
"""


@pytest.fixture
def measured(warehouse: Warehouse) -> Warehouse:
    ingest(warehouse, JOBS)
    return warehouse


def test_gpu_hours_and_sus_split_across_weeks_and_days(measured: Warehouse) -> None:
    weeks = {(row["week"], row["team"]): row for row in analytics.usage_by_period(measured.engine, *WEEKS, "week")}
    assert [weeks[week, "ai-platform"]["gpu_hours"] for week in (date(2026, 11, 2), date(2026, 11, 9))] == [6.0, 6.0]
    assert [weeks[week, "ai-platform"]["su"] for week in (date(2026, 11, 2), date(2026, 11, 9))] == [8.0, 8.0]
    assert weeks[date(2026, 11, 2), "data-science"]["su"] == 2 * 1 * 4 + 1 * 1 * 4 + 1 * 2 * 4, "every attempt charged"
    days = {
        (row["day"], row["team"]): row["cost_usd"] for row in analytics.usage_by_period(measured.engine, *WEEKS, "day")
    }
    assert days[date(2026, 11, 8), "ai-platform"] == days[date(2026, 11, 9), "ai-platform"] == round(6 * 0.35, 2)
    total = sum(row["cost_usd"] for row in analytics.cost_by_team(measured.engine, *WEEKS))
    assert sum(days.values()) == pytest.approx(total, abs=0.02), "the split loses nothing"


def test_wait_time_by_queue_and_week_from_eligible_time(measured: Warehouse) -> None:
    waits = {(row["queue"], row["week"]): row for row in metrics.wait_by_queue_and_week(measured.engine, *WEEKS)}
    a100 = waits["gpu-a100", date(2026, 11, 2)]
    assert (a100["jobs"], a100["avg_wait_minutes"], a100["max_wait_minutes"]) == (
        4,
        round((120 + 300 + 10 / 60 + 0) / 4, 1),
        300.0,
    )
    assert waits["gpu-h100", date(2026, 11, 2)]["max_wait_minutes"] == 0.5
    histogram = [(row["queue"], row["wait"], row["jobs"]) for row in metrics.wait_histogram(measured.engine, *WEEKS)]
    assert histogram == [
        ("gpu-a100", "< 1 min", 2),
        ("gpu-a100", "1-4 h", 1),
        ("gpu-a100", "4-12 h", 1),
        ("gpu-h100", "< 1 min", 1),
    ]


def test_time_efficiency_per_user_and_agent(measured: Warehouse) -> None:
    rows = {(row["user"], row["agent"]): row for row in metrics.time_efficiency(measured.engine, *WEEKS)}
    assert (rows["jdoe", "AlphaCal"]["jobs"], rows["jdoe", "AlphaCal"]["time_used_pct"]) == (2, 50.0)
    sweep = rows["asmith", "sweep"]
    assert (sweep["jobs"], sweep["used_hours"], sweep["requested_hours"], sweep["avg_job_time_used_pct"]) == (
        2,
        3.0,
        6.0,
        62.5,
    )


def test_job_sizes_and_success_by_agent(measured: Warehouse) -> None:
    sizes = [(row["gpus"], row["jobs"]) for row in metrics.job_sizes(measured.engine, *WEEKS)]
    assert sizes == [("2", 1), ("3-4", 2), ("5-8", 1)], "final attempts only"
    success = {row["agent"]: row for row in metrics.success_by_agent(measured.engine, *WEEKS)}
    assert (success["AlphaCal"]["jobs"], success["AlphaCal"]["failed"], success["AlphaCal"]["success_rate_pct"]) == (
        2,
        1,
        50.0,
    )
    assert (
        success["sweep"]["timeout"],
        success["sweep"]["requeued_attempts"],
        success["sweep"]["success_rate_pct"],
    ) == (1, 1, 50.0)


def test_cpu_and_memory_efficiency_where_steps_were_measured(measured: Warehouse) -> None:
    (job,) = metrics.job_efficiency(measured.engine, *WEEKS)
    assert (job["job_id"], job["cpu_efficiency_pct"], job["max_rss_gb"], job["memory_efficiency_pct"]) == (
        "9102",
        25.0,
        30.0,
        15.0,
    )


@pytest.mark.usefixtures("prefect_server")
def test_the_weekly_report_has_a_table_for_each_metric_and_two_charts(postgres_block: str) -> None:
    report = usage_report(*WEEKS)
    keys = [key for _, key, _ in TABLES + CHARTS]
    with get_client(sync_client=True) as client:
        found = {
            artifact.key: artifact
            for artifact in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        }
    assert set(found) == set(keys)
    assert all("data:image/png;base64," in found[key].data for _, key, _ in CHARTS)
    assert open(report.wait_chart_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
