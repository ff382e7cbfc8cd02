"""Parsing and normalizing accounting rows (pure pandas, no database)."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.synthetic import synthetic_sacct_rows
from tacc_jobs.accounting.normalize import CostRates, normalize_records
from tacc_jobs.accounting.sacct import normalize_sacct
from tacc_jobs.accounting.sources import sacct_frames
from tacc_jobs.schedulers.base import sacct_rows

ROWS = """\
123|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-01T10:00:00|2026-11-01T10:00:00|2026-11-01T10:00:05|2026-11-01T10:05:05|00:05:00|02:00:00|4|billing=4,cpu=512,node=4|||tacc-abc
123.batch||ml-research||COMPLETED|0:0|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:05:05|00:05:00||1|cpu=128,node=1|||batch
123.extern||ml-research||COMPLETED|0:0|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:05:05|00:05:00||4|node=4|||extern
123.0||ml-research||COMPLETED|0:0|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:00:05|2026-11-01T10:05:05|00:05:00||4|node=4|||python
124_1|asmith|data-science|gpu-h100|CANCELLED by 1001|0:15|2026-11-01T10:00:00|2026-11-01T10:00:00|2026-11-01T11:00:00|2026-11-02T13:00:00|1-02:00:00|02:00:00|1|billing=2,gres/gpu=2,node=1|||sweep
124_2|asmith|data-science|gpu-h100|PENDING|0:0|2026-11-01T10:00:00|2026-11-01T10:00:00|Unknown|Unknown|00:00:00|02:00:00|1||||sweep
125|jdoe|ml-research|gpu-a100|FAILED|3:0|2026-11-01T10:00:00|2026-11-01T10:00:00|2026-11-01T11:00:00|2026-11-01T09:00:00|00:00:00|02:00:00|1||||x
126|jdoe|ml-research|gpu-a100|FAILED|3:0|garbage|garbage|2026-11-01T11:00:00|2026-11-01T12:00:00|01:00:00|02:00:00|1||||x
abc|jdoe|ml-research|gpu-a100|FAILED|3:0|2026-11-01T10:00:00|2026-11-01T10:00:00|2026-11-01T11:00:00|2026-11-01T12:00:00|01:00:00|02:00:00|1||||x
127|jdoe|ml-research|gpu-a100|RUNNING|0:0|2026-11-01T10:00:00|2026-11-01T10:00:00|2026-11-01T11:00:00|Unknown|25:00|02:00:00|x||||x
"""


@pytest.fixture
def normalized():
    ((frame, malformed),) = sacct_frames(sacct_rows(ROWS.splitlines()), 100)
    assert malformed == []
    return normalize_sacct(frame, "ls6", CostRates(), {"tacc-abc": "AlphaCal"})


def test_steps_fold_into_their_job_and_array_tasks_stay_jobs(normalized) -> None:
    assert list(normalized.usage["job_id"]) == ["123", "124_1", "124_2"]
    assert normalized.steps_folded == 3


def test_states_times_and_gpus(normalized) -> None:
    usage = normalized.usage.set_index("job_id")
    assert list(usage["status"]) == ["completed", "cancelled", "pending"]
    assert usage.loc["123", "model_name"] == "AlphaCal" and usage.loc["124_1", "model_name"] == "sweep"
    assert usage.loc["123", "gpu_count"] == 12, "no gres/gpu in AllocTRES: nodes x GPUs per node"
    assert usage.loc["124_1", "gpu_count"] == 2, "gres/gpu from AllocTRES"
    assert usage.loc["124_1", "elapsed_seconds"] == 93600
    assert pd.isna(usage.loc["124_2", "end_time"]) and pd.isna(usage.loc["124_2", "start_time"])
    assert usage.loc["123", "gpu_type"] == "a100" and usage.loc["124_1", "gpu_type"] == "h100"
    assert usage.loc["123", "provider"] == "tacc" and usage.loc["123", "team_name"] == "ml-research"


def test_costs_follow_tacc_formula_and_rates(normalized) -> None:
    usage = normalized.usage.set_index("job_id")
    assert usage.loc["123", "su_charged"] == 4 * 0.25 * 4, "5 minutes bill the 15-minute minimum"
    assert usage.loc["124_1", "su_charged"] == 1 * 26 * 6
    assert usage.loc["124_2", "su_charged"] == 0, "a job that never started is not charged"
    assert usage.loc["124_1", "cost_usd"] == pytest.approx(2 * 26 * 0.35)
    rated = normalize_sacct(
        next(sacct_frames(sacct_rows(ROWS.splitlines()), 100))[0],
        "ls6",
        CostRates(usd_per_gpu_hour_by_type={"h100": 1.0}),
    )
    assert rated.usage.set_index("job_id").loc["124_1", "cost_usd"] == pytest.approx(52.0)


def test_bad_rows_are_kept_with_their_reason(normalized) -> None:
    reasons = dict(zip(normalized.quarantine["raw"].str.split("|").str[0], normalized.quarantine["reason"]))
    assert reasons == {
        "125": "End is before Start",
        "126": "Submit is not a time",
        "abc": "JobID is not a Slurm job id",
        "127": "NNodes is not a number",
    }


def test_rows_with_the_wrong_field_count_are_set_aside() -> None:
    ((frame, malformed),) = sacct_frames([["1", "only", "three"], ROWS.splitlines()[0].split("|")], 10)
    assert len(frame) == 1 and malformed == ["1|only|three"]


def test_chunks_bound_memory_whatever_the_input() -> None:
    frames = [frame for frame, _ in sacct_frames(synthetic_sacct_rows(1000), 400)]
    assert [len(frame) for frame in frames] == [402] * 7 + [186], "400 rows, then the rest of the last job's"
    assert all("." not in frame["JobID"].iloc[0] for frame in frames), "a job's steps are never apart from it"


def test_records_are_lower_cased_checked_and_costed() -> None:
    raw = pd.DataFrame(
        [
            {
                "job_id": "a-1",
                "team_name": "ml-research",
                "model_name": "llama",
                "provider": "TACC",
                "gpu_type": "H100",
                "start_time": "2026-11-01T10:00:00Z",
                "end_time": "2026-11-01T12:00:00Z",
                "status": "COMPLETED",
                "gpu_count": 4,
            },
            {
                "job_id": "a-2",
                "team_name": "ml-research",
                "model_name": "llama",
                "provider": "aws",
                "gpu_type": "a100",
                "start_time": "2026-11-01T10:00:00Z",
                "end_time": "2026-11-01T09:00:00Z",
                "status": "failed",
            },
            {
                "job_id": "",
                "team_name": "x",
                "model_name": "y",
                "provider": "aws",
                "gpu_type": "a100",
                "start_time": "2026-11-01T10:00:00Z",
                "end_time": "2026-11-01T11:00:00Z",
                "status": "failed",
            },
            {
                "job_id": "a-4",
                "team_name": "x",
                "model_name": "y",
                "provider": "aws",
                "gpu_type": "a100",
                "start_time": "yesterday",
                "end_time": "2026-11-01T11:00:00Z",
                "status": "failed",
            },
        ]
    )
    result = normalize_records(raw, "file", CostRates())
    row = result.usage.iloc[0]
    assert (row["provider"], row["gpu_type"], row["status"], row["system"]) == ("tacc", "h100", "completed", "tacc")
    assert row["gpu_hours"] == 8 and row["cost_usd"] == pytest.approx(2.8)
    assert list(result.quarantine["reason"]) == [
        "end_time is before start_time",
        "job_id is missing",
        "start_time is not a time",
    ]
