"""Normalized accounting rows: the `job_usage` columns, costs by TACC's SU rule and the dollar
rates, bad rows kept with their reason; and job records from JSON/CSV files and HTTP feeds.

Output columns (`USAGE_COLUMNS`) are those of the `job_usage` table, less the final-attempt mark
(the warehouse keeps it), the run and the ingestion time. sacct rows: `tacc_jobs.accounting.sacct`.
"""

from __future__ import annotations

import pandas as pd
from pydantic import BaseModel

from tacc_jobs.accounting.parsing import parse_times
from tacc_jobs.planning.catalog import load_catalog
from tacc_jobs.planning.charges import service_units

DEFAULT_SOURCE_ZONE = "America/Chicago"
"""The zone of file and HTTP times written without an offset: TACC's clusters' local time."""
RECORD_FIELDS = ["job_id", "team_name", "model_name", "provider", "gpu_type", "start_time", "end_time", "status"]
OPTIONAL_RECORD_FIELDS = ["system", "user_name", "partition", "nodes", "gpu_count", "submit_time"]
USAGE_COLUMNS = [
    "system",
    "job_id",
    "submit_time",
    "job_name",
    "user_name",
    "account",
    "team_name",
    "model_name",
    "provider",
    "gpu_type",
    "partition",
    "status",
    "exit_code",
    "eligible_time",
    "start_time",
    "end_time",
    "elapsed_seconds",
    "time_limit_seconds",
    "nodes",
    "gpu_count",
    "cpus",
    "mem_bytes",
    "cpu_seconds",
    "max_rss_bytes",
    "gpu_hours",
    "su_charged",
    "cost_usd",
    "source",
]
_COUNTS = {"elapsed_seconds": "int64", "nodes": "int64", "gpu_count": "int64"}
_OPTIONAL_COUNTS = ["time_limit_seconds", "cpus", "mem_bytes", "max_rss_bytes"]


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


def queue_table() -> pd.DataFrame:
    """The catalog's queues as a frame: system, partition, GPUs per node, SU rate, GPU type.

    Example:
        >>> queue_table().set_index(["system", "partition"]).loc[("ls6", "gpu-h100"), "su_rate"]
        np.float64(6.0)
    """
    return pd.DataFrame(
        [(q.system, q.queue, q.gpus_per_node, q.su_per_node_hour, q.gpu_type) for q in load_catalog()],
        columns=["system", "partition", "gpus_per_node", "su_rate", "catalog_gpu_type"],
    )


def quarantined(raw: pd.DataFrame, mask: pd.Series, reason: pd.Series) -> pd.DataFrame:
    """The input rows under `mask` as they came (fields joined by `|`), with their reasons.

    Example:
        >>> raw = pd.DataFrame({"JobID": ["1", "x"], "State": ["COMPLETED", ""]})
        >>> quarantined(raw, raw["State"] == "", pd.Series(["", "State is empty"])).values.tolist()
        [['x|', 'State is empty']]
    """
    bad = raw[mask]
    if bad.empty:
        return pd.DataFrame({"raw": pd.Series(dtype=str), "reason": pd.Series(dtype=str)})
    text = bad.astype(object).where(bad.notna(), "")
    return pd.DataFrame({"raw": text.apply(lambda row: "|".join(map(str, row)), axis=1), "reason": reason[mask]})


def add_costs(usage: pd.DataFrame, rates: CostRates) -> pd.DataFrame:
    """Add gpu_hours, su_charged (TACC's rule, `service_units`, for jobs that ran on a known queue;
    every attempt of a requeued job is charged its own) and cost_usd (GPU-hours x the GPU type's rate)."""
    usage = usage.merge(queue_table()[["system", "partition", "su_rate"]], on=["system", "partition"], how="left")
    hours = usage["elapsed_seconds"] / 3600
    usage["gpu_hours"] = (usage["gpu_count"] * hours).round(6)
    ran = usage["start_time"].notna()
    usage["su_charged"] = service_units(usage["nodes"], hours, usage["su_rate"]).where(ran, 0.0)
    usage.loc[usage["su_rate"].isna(), "su_charged"] = None
    rate = usage["gpu_type"].map(rates.usd_per_gpu_hour_by_type).fillna(rates.usd_per_gpu_hour)
    usage["cost_usd"] = (usage["gpu_hours"] * rate).round(4)
    return usage.drop(columns=["su_rate"])


def usage_frame(usage: pd.DataFrame) -> pd.DataFrame:
    """`USAGE_COLUMNS` in order, counts as integers (nullable where sacct may not know them).

    Example:
        ```python
        usage_frame(add_costs(jobs, CostRates()))  # ready for `Warehouse.upsert`
        ```
    """
    usage = usage[USAGE_COLUMNS].astype(_COUNTS)
    return usage.assign(**{name: pd.to_numeric(usage[name]).round().astype("Int64") for name in _OPTIONAL_COUNTS})


def normalize_records(raw: pd.DataFrame, source: str, rates: CostRates, zone: str = DEFAULT_SOURCE_ZONE) -> Normalized:
    """Normalize one chunk of job records from a JSON/CSV file or an HTTP feed.

    Required: `RECORD_FIELDS`; optional: `OPTIONAL_RECORD_FIELDS` (submit_time defaults to
    start_time). Provider, GPU type and status are lower-cased; end must not be before start.
    Times without an offset are wall-clock times in `zone` (an IANA name); one that daylight
    saving time makes ambiguous takes its first occurrence, except an end time that would then
    come before its start, which takes its second.

    Example:
        >>> record = {"job_id": "a-1", "team_name": "ml", "model_name": "llama", "provider": "TACC", "gpu_type": "A100",
        ...           "start_time": "2026-11-01T01:50:00", "end_time": "2026-11-01T01:10:00", "status": "COMPLETED"}
        >>> usage = normalize_records(pd.DataFrame([record]), "file", CostRates()).usage
        >>> usage.loc[0, "start_time"].isoformat(), usage.loc[0, "elapsed_seconds"]
        ('2026-11-01T06:50:00+00:00', np.int64(1200))
    """
    raw = raw.copy()
    for column in [*RECORD_FIELDS, *OPTIONAL_RECORD_FIELDS]:
        if column not in raw:
            raw[column] = None
    text = raw.astype("string")
    problems = pd.Series("", index=raw.index)
    for column in RECORD_FIELDS:
        missing = text[column].fillna("").str.strip() == ""
        problems[missing & (problems == "")] = f"{column} is missing"
    start, end, submit = (parse_times(text[column], zone) for column in ("start_time", "end_time", "submit_time"))
    end_time = end.first.where(~(end.first < start.first), end.last)
    gpus = pd.to_numeric(raw["gpu_count"], errors="coerce")
    nodes = pd.to_numeric(raw["nodes"], errors="coerce")
    for mask, reason in (
        (start.bad, "start_time is not a time"),
        (end.bad, "end_time is not a time"),
        (submit.bad, "submit_time is not a time"),
        (end_time.notna() & start.first.notna() & (end_time < start.first), "end_time is before start_time"),
        (raw["gpu_count"].notna() & (gpus.isna() | (gpus < 0)), "gpu_count is not a count"),
        (raw["nodes"].notna() & (nodes.isna() | (nodes < 0)), "nodes is not a count"),
    ):
        problems[mask & (problems == "")] = reason
    keep = problems == ""
    provider = text["provider"].str.strip().str.lower()
    usage = pd.DataFrame(
        {
            "system": text["system"].str.strip().str.lower().fillna(provider),
            "job_id": text["job_id"].str.strip(),
            "submit_time": submit.first.where(submit.first.notna(), start.first),
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
            "eligible_time": pd.Series(pd.NaT, index=raw.index, dtype="datetime64[ns, UTC]"),
            "start_time": start.first,
            "end_time": end_time,
            "elapsed_seconds": ((end_time - start.first).dt.total_seconds()).fillna(0),
            "time_limit_seconds": None,
            "nodes": nodes.fillna(1),
            "gpu_count": gpus.fillna(1),
            "cpus": None,
            "mem_bytes": None,
            "cpu_seconds": None,
            "max_rss_bytes": None,
            "source": source,
        }
    )[keep]
    return Normalized(usage=usage_frame(add_costs(usage, rates)), quarantine=quarantined(raw, problems != "", problems))
