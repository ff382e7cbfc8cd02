"""`sacct --parsable2 --duplicates` rows as accounted jobs.

- A step row (`123.batch`, `123.0`) adds its usage to the job row above it: CPU time summed
  (TRESUsageInTot `cpu=`), peak memory the largest MaxRSS of any step, never a sum.
- Components of a heterogeneous job (`123+0`, `123+1`) fold into job `123` with their sums
  (nodes, GPUs, CPUs, memory, GPU-hours, SUs and dollars, each charged in its own queue).
- Each attempt of a requeued job is a row of its own (sacct prints one per attempt, each with
  its own submit time) and is charged its own elapsed time; the warehouse marks the final one.
- GPUs come from AllocTRES (`allocated_gpus`), never ReqTRES; when AllocTRES names no GPU, the
  job had whole nodes of its queue (TACC), so nodes x GPUs per node.
- Times are UTC: `Scheduler.accounting` runs sacct with `TZ=UTC`.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from tacc_jobs.accounting.normalize import (
    CostRates,
    Normalized,
    add_costs,
    quarantined,
    queue_table,
    usage_frame,
)
from tacc_jobs.accounting.parsing import (
    allocated_gpus,
    parse_durations,
    parse_job_ids,
    parse_sizes,
    parse_times,
    tres_count,
    tres_value,
)

_SUMMED = ["nodes", "gpu_count", "cpus", "mem_bytes", "cpu_seconds", "gpu_hours", "su_charged", "cost_usd"]
_LATEST = ["end_time", "elapsed_seconds", "time_limit_seconds", "max_rss_bytes"]
_EARLIEST = ["eligible_time", "start_time"]


def _step_usage(raw: pd.DataFrame, ids: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """CPU seconds (summed) and peak RSS (the largest) of the steps under each job row, indexed
    like the job rows; and how many step rows there were. A step counts for the job row above it
    when it names that job and component (sacct prints a job's steps right after it)."""
    is_step = ids["step"].notna()
    owner = (~is_step).cumsum()
    component = (ids["job"] + "+" + ids["het"].fillna("")).fillna("").to_numpy(dtype=object)
    owner_component = pd.Series(component[~is_step.to_numpy()], index=owner[~is_step].to_numpy())
    belongs = is_step & (component == owner_component.reindex(owner).fillna("").to_numpy(dtype=object))
    steps = raw[belongs]
    usage = pd.DataFrame(
        {
            "owner": owner[belongs],
            "cpu_seconds": parse_durations(tres_value(steps["TRESUsageInTot"], "cpu")),
            "max_rss_bytes": parse_sizes(steps["MaxRSS"]),
        }
    ).groupby("owner")
    per_owner = pd.DataFrame(
        {"cpu_seconds": usage["cpu_seconds"].sum(min_count=1), "max_rss_bytes": usage["max_rss_bytes"].max()}
    )
    jobs = owner[~is_step]
    return per_owner.reindex(jobs.to_numpy()).set_axis(jobs.index), int(is_step.sum())


def _fold_components(usage: pd.DataFrame) -> pd.DataFrame:
    """Fold the components of heterogeneous jobs (rows with a `het` offset) into one row per job
    and attempt: sums of what they hold, the earliest start, the latest end, component 0's name,
    user, queue and state."""
    het = usage["het"].notna()
    if not het.any():
        return usage
    grouped = usage[het].sort_values("het", kind="stable").groupby(["system", "job_id", "submit_time"], sort=False)
    folded = grouped.first()
    for column in _SUMMED:
        folded[column] = grouped[column].sum(min_count=1)
    for column in _LATEST:
        folded[column] = grouped[column].max()
    for column in _EARLIEST:
        folded[column] = grouped[column].min()
    return pd.concat([usage[~het], folded.reset_index()], ignore_index=True)


def normalize_sacct(
    raw: pd.DataFrame, system: str, rates: CostRates, agents: Mapping[str, str] | None = None
) -> Normalized:
    """Normalize one chunk of sacct rows (columns `SACCT_FIELDS`, all strings, a job's steps and
    components in the same chunk). Array tasks (`123_4`) stay jobs of their own; `agents` maps a
    Slurm job name to the agent (model) that ran.

    Example:
        >>> from tacc_jobs.schedulers.base import SACCT_FIELDS, sacct_rows
        >>> text = ["9|jdoe|ml|gpu-a100|COMPLETED|0:0" + "|2026-11-01T10:00:00" * 3 + "|2026-11-01T12:00:00"
        ...         "|02:00:00|04:00:00|1|cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||train|a|b",
        ...         "9.batch||ml||COMPLETED|0:0" + "|2026-11-01T10:00:00" * 3 + "|2026-11-01T12:00:00"
        ...         "|02:00:00||1|cpu=128,mem=250G,node=1|cpu=10:00:00,mem=40G|40G|batch"]
        >>> job = normalize_sacct(pd.DataFrame(sacct_rows(text), columns=SACCT_FIELDS), "ls6", CostRates()).usage.iloc[0]
        >>> job["job_name"], job["gpu_count"], job["su_charged"], job["cpu_seconds"], job["max_rss_bytes"] / 2**30
        ('train|a|b', np.int64(3), np.float64(8.0), np.float64(36000.0), np.float64(40.0))
    """
    raw = raw.fillna("")
    ids = parse_job_ids(raw["JobID"])
    used, steps = _step_usage(raw, ids)
    jobs = ids["step"].isna()
    raw, ids = raw[jobs], ids[jobs]
    problems = pd.Series("", index=raw.index)
    problems[ids["job"].isna()] = "JobID is not a Slurm job id"
    submit, eligible, start, end = (parse_times(raw[column]) for column in ("Submit", "Eligible", "Start", "End"))
    elapsed = parse_durations(raw["Elapsed"])
    nodes = pd.to_numeric(raw["NNodes"], errors="coerce").astype(float)
    for mask, reason in (
        (submit.bad, "Submit is not a time"),
        (submit.first.isna(), "Submit is missing"),
        (eligible.bad, "Eligible is not a time"),
        (start.bad, "Start is not a time"),
        (end.bad, "End is not a time"),
        (elapsed.isna(), "Elapsed is not [D-]HH:MM:SS"),
        (nodes.isna(), "NNodes is not a number"),
        (raw["State"].str.strip() == "", "State is empty"),
        (end.first.notna() & start.first.notna() & (end.first < start.first), "End is before Start"),
    ):
        problems[mask & (problems == "")] = reason
    keep = problems == ""
    gpus = allocated_gpus(raw["AllocTRES"])
    jobs = pd.DataFrame(
        {
            "system": system,
            "job_id": ids["job"],
            "het": pd.to_numeric(ids["het"]),
            "job_name": raw["JobName"],
            "user_name": raw["User"].replace("", None),
            "account": raw["Account"].replace("", None),
            "partition": raw["Partition"],
            "status": raw["State"].str.split().str[0].str.rstrip("+").str.lower(),
            "exit_code": raw["ExitCode"].replace("", None),
            "submit_time": submit.first,
            "eligible_time": eligible.first,
            "start_time": start.first,
            "end_time": end.first,
            "elapsed_seconds": elapsed,
            "time_limit_seconds": parse_durations(raw["Timelimit"]),
            "nodes": nodes,
            "tres_gpus": gpus["gpus"],
            "tres_gpu_type": gpus["gpu_type"],
            "cpus": tres_count(raw["AllocTRES"], "cpu"),
            "mem_bytes": parse_sizes(tres_value(raw["AllocTRES"], "mem")),
            "cpu_seconds": used["cpu_seconds"],
            "max_rss_bytes": used["max_rss_bytes"],
        }
    )[keep]
    jobs = jobs.merge(
        queue_table()[["system", "partition", "gpus_per_node", "catalog_gpu_type"]],
        on=["system", "partition"],
        how="left",
    )
    jobs["gpu_count"] = jobs["tres_gpus"].fillna(jobs["nodes"] * jobs["gpus_per_node"]).fillna(0)
    jobs["gpu_type"] = jobs["tres_gpu_type"].fillna(jobs["catalog_gpu_type"]).fillna("unknown")
    jobs["team_name"] = jobs["account"]
    jobs["model_name"] = jobs["job_name"].replace(dict(agents or {}))
    jobs["provider"] = "tacc"
    jobs["source"] = "sacct"
    usage = _fold_components(add_costs(jobs, rates))
    return Normalized(
        usage=usage_frame(usage), quarantine=quarantined(raw, problems != "", problems), steps_folded=steps
    )
