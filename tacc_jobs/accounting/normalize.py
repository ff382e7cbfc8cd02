"""Parse and normalize accounting rows with pandas, keeping every bad row with its reason.

Output columns (`USAGE_COLUMNS`) are those of the `job_usage` table, less id/run/ingestion time.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from tacc_jobs.planning.catalog import load_catalog
from tacc_jobs.planning.charges import service_units

RECORD_FIELDS = ["job_id", "team_name", "model_name", "provider", "gpu_type", "start_time", "end_time", "status"]
USAGE_COLUMNS = ["system", "job_id", "job_name", "user_name", "account", "team_name", "model_name", "provider",
                 "gpu_type", "partition", "status", "exit_code", "submit_time", "start_time", "end_time",
                 "elapsed_seconds", "nodes", "gpu_count", "gpu_hours", "su_charged", "cost_usd", "source"]
_JOB_ID = r"\d+(?:_(?:\d+|\[[0-9,%-]+\]))?"
_ELAPSED = r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d{1,2}):(?P<s>\d{2})$"
_MISSING_TIMES = {"", "Unknown", "None", "N/A"}


class Normalized(BaseModel):
    """One normalized chunk: good rows, bad rows with reasons, step rows folded away."""

    model_config = {"arbitrary_types_allowed": True}

    usage: pd.DataFrame
    quarantine: pd.DataFrame
    steps_folded: int = 0


class CostRates(BaseModel):
    """Dollar rates per GPU-hour: one default and optional per-GPU-type overrides."""

    usd_per_gpu_hour: float = 0.35
    usd_per_gpu_hour_by_type: dict[str, float] = {}


def _queue_table() -> pd.DataFrame:
    return pd.DataFrame(
        [(q.system, q.queue, q.gpus_per_node, q.su_per_node_hour, q.gpu_type) for q in load_catalog()],
        columns=["system", "partition", "gpus_per_node", "su_rate", "catalog_gpu_type"],
    )


def _times(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parsed UTC times, and a mask of values that were present but unparsable."""
    text = values.fillna("").astype(str).str.strip()
    missing = text.isin(_MISSING_TIMES)
    parsed = pd.to_datetime(text.where(~missing), utc=True, errors="coerce", format="ISO8601")
    return parsed, parsed.isna() & ~missing


def _extract(values: pd.Series, pattern: str) -> pd.DataFrame:
    """Named regex groups as columns, vectorized by Arrow (no Python per row); NaN where no match."""
    groups = pc.extract_regex(pa.array(values.fillna("").astype(str), type=pa.string()), pattern)
    matched = groups.is_valid().to_numpy(zero_copy_only=False)
    frame = pd.DataFrame({name: groups.field(name).to_numpy(zero_copy_only=False) for name in groups.type.names}, index=values.index)
    return frame.where(pd.Series(matched, index=values.index), axis=0)


def elapsed_to_seconds(values: pd.Series) -> pd.Series:
    """Slurm's `[D-]HH:MM:SS` or `MM:SS` as seconds (NaN where unparsable)."""
    parts = _extract(values, _ELAPSED)
    parts = parts.where(parts.isna(), parts.replace("", "0")).astype(float)
    return parts["d"] * 86400 + parts["h"] * 3600 + parts["m"] * 60 + parts["s"]


def _quarantine(raw: pd.DataFrame, mask: pd.Series, reason: str | pd.Series) -> pd.DataFrame:
    bad = raw[mask]
    if bad.empty:
        return pd.DataFrame({"raw": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    reasons = reason[mask] if isinstance(reason, pd.Series) else pd.Series(reason, index=bad.index)
    text = bad.astype(object).where(bad.notna(), "")
    return pd.DataFrame({"raw": text.apply(lambda row: "|".join(map(str, row)), axis=1), "reason": reasons})


def add_costs(usage: pd.DataFrame, rates: CostRates) -> pd.DataFrame:
    """Add gpu_hours, su_charged (TACC: nodes x max(hours, 0.25) x queue rate, for jobs that ran
    on a known queue) and cost_usd (GPU-hours x the GPU type's rate)."""
    usage = usage.merge(_queue_table()[["system", "partition", "su_rate"]], on=["system", "partition"], how="left")
    hours = usage["elapsed_seconds"] / 3600
    usage["gpu_hours"] = (usage["gpu_count"] * hours).round(6)
    ran = usage["start_time"].notna()
    usage["su_charged"] = service_units(usage["nodes"], hours, usage["su_rate"]).where(ran, 0.0)
    usage.loc[usage["su_rate"].isna(), "su_charged"] = None
    rate = usage["gpu_type"].map(rates.usd_per_gpu_hour_by_type).fillna(rates.usd_per_gpu_hour)
    usage["cost_usd"] = (usage["gpu_hours"] * rate).round(4)
    return usage.drop(columns=["su_rate"])


def normalize_sacct(raw: pd.DataFrame, system: str, rates: CostRates, agents: Mapping[str, str] | None = None) -> Normalized:
    """Normalize one chunk of `sacct --parsable2` output (columns `SACCT_FIELDS`, all strings).

    Job steps (`123.batch`, `123.extern`, `123.0`) fold into their job; array tasks (`123_4`)
    stay jobs of their own. `agents` maps a Slurm job name to the agent (model) that ran.
    """
    raw = raw.fillna("")
    steps = raw["JobID"].str.contains(".", regex=False)
    steps_folded = int(steps.sum())
    raw = raw[~steps]  # a step folds into its job: nothing of it is kept
    job_ids = raw["JobID"].where(raw["JobID"].str.fullmatch(_JOB_ID).fillna(False).astype(bool))
    problems = pd.Series("", index=raw.index)
    problems[job_ids.isna()] = "JobID is not a Slurm job id"
    submit, bad_submit = _times(raw["Submit"])
    start, bad_start = _times(raw["Start"])
    end, bad_end = _times(raw["End"])
    elapsed = elapsed_to_seconds(raw["Elapsed"])
    nodes = pd.to_numeric(raw["NNodes"], errors="coerce")
    for mask, reason in (
        (bad_submit, "Submit is not a time"), (bad_start, "Start is not a time"), (bad_end, "End is not a time"),
        (elapsed.isna(), "Elapsed is not [D-]HH:MM:SS"), (nodes.isna(), "NNodes is not a number"),
        (raw["State"].str.strip() == "", "State is empty"),
        (end.notna() & start.notna() & (end < start), "End is before Start"),
    ):
        problems[mask & (problems == "")] = reason
    keep = problems == ""
    queues = _queue_table()
    jobs = pd.DataFrame({
        "system": system,
        "job_id": job_ids,
        "job_name": raw["JobName"],
        "user_name": raw["User"].replace("", None),
        "account": raw["Account"].replace("", None),
        "partition": raw["Partition"],
        "status": raw["State"].str.split().str[0].str.rstrip("+").str.lower(),
        "exit_code": raw["ExitCode"].replace("", None),
        "submit_time": submit, "start_time": start, "end_time": end,
        "elapsed_seconds": elapsed, "nodes": nodes,
        "tres_gpus": pd.to_numeric(_extract(raw["AllocTRES"], r"gres/gpu=(?P<gpus>\d+)")["gpus"], errors="coerce"),
    })[keep]
    jobs = jobs.merge(queues[["system", "partition", "gpus_per_node", "catalog_gpu_type"]], on=["system", "partition"], how="left")
    jobs["gpu_count"] = jobs["tres_gpus"].fillna(jobs["nodes"] * jobs["gpus_per_node"]).fillna(0)
    jobs["gpu_type"] = jobs["catalog_gpu_type"].fillna("unknown")
    jobs["team_name"] = jobs["account"]
    jobs["model_name"] = jobs["job_name"].replace(dict(agents or {}))
    jobs["provider"] = "tacc"
    jobs["source"] = "sacct"
    jobs = jobs.astype({"elapsed_seconds": "int64", "nodes": "int64", "gpu_count": "int64"})
    usage = add_costs(jobs.drop(columns=["tres_gpus", "gpus_per_node", "catalog_gpu_type"]), rates)
    return Normalized(usage=usage[USAGE_COLUMNS], quarantine=_quarantine(raw, problems != "", problems), steps_folded=steps_folded)


def normalize_records(raw: pd.DataFrame, source: str, rates: CostRates) -> Normalized:
    """Normalize one chunk of job records from a JSON/CSV file or an HTTP feed.

    Required: `RECORD_FIELDS`. Optional: system, user_name, partition, nodes, gpu_count.
    Provider, GPU type and status are lower-cased; end must not be before start.
    """
    raw = raw.copy()
    for column in [*RECORD_FIELDS, "system", "user_name", "partition", "nodes", "gpu_count"]:
        if column not in raw:
            raw[column] = None
    text = raw.astype("string")
    problems = pd.Series("", index=raw.index)
    for column in RECORD_FIELDS:
        missing = text[column].fillna("").str.strip() == ""
        problems[missing & (problems == "")] = f"{column} is missing"
    start, bad_start = _times(text["start_time"])
    end, bad_end = _times(text["end_time"])
    gpus = pd.to_numeric(raw["gpu_count"], errors="coerce")
    nodes = pd.to_numeric(raw["nodes"], errors="coerce")
    for mask, reason in (
        (bad_start, "start_time is not a time"), (bad_end, "end_time is not a time"),
        (end.notna() & start.notna() & (end < start), "end_time is before start_time"),
        (raw["gpu_count"].notna() & (gpus.isna() | (gpus < 0)), "gpu_count is not a count"),
        (raw["nodes"].notna() & (nodes.isna() | (nodes < 0)), "nodes is not a count"),
    ):
        problems[mask & (problems == "")] = reason
    keep = problems == ""
    provider = text["provider"].str.strip().str.lower()
    usage = pd.DataFrame({
        "system": text["system"].str.strip().str.lower().fillna(provider),
        "job_id": text["job_id"].str.strip(),
        "job_name": text["model_name"],
        "user_name": text["user_name"],
        "account": text["team_name"],
        "team_name": text["team_name"].str.strip(),
        "model_name": text["model_name"].str.strip(),
        "provider": provider,
        "gpu_type": text["gpu_type"].str.strip().str.lower(),
        "partition": text["partition"],
        "status": text["status"].str.strip().str.lower(),
        "exit_code": None,
        "submit_time": start, "start_time": start, "end_time": end,
        "elapsed_seconds": ((end - start).dt.total_seconds()).fillna(0),
        "nodes": nodes.fillna(1), "gpu_count": gpus.fillna(1),
        "source": source,
    })[keep]
    usage = usage.astype({"elapsed_seconds": "int64", "nodes": "int64", "gpu_count": "int64"})
    usage = add_costs(usage, rates)
    return Normalized(usage=usage[USAGE_COLUMNS], quarantine=_quarantine(raw, problems != "", problems))
