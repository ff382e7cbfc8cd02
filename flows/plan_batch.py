"""plan-batch: a batch packed into whole-node allocations and arrays, and its saving, submitting nothing."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_table_artifact

from tacc_jobs.models import JobRequest
from tacc_jobs.planning.packing import BatchPlan, PlanFigures
from tasks.planning import plan_request_batch


def _total(label: str, figures: PlanFigures) -> dict[str, Any]:
    return {
        "allocation": label,
        "strategy": "",
        "requests": "",
        "nodes": "",
        "wall_time": "",
        "su": figures.su,
        "cost_usd": figures.cost_usd,
        "slurm_jobs": figures.slurm_jobs,
        "makespan": figures.model_dump(mode="json")["makespan"],
        "reason": "",
    }


def plan_table(plan: BatchPlan) -> list[dict[str, Any]]:
    """One row per allocation, then the packed total, one job per request and the saving."""
    rows = [
        {
            "allocation": f"{number}: {a.system}/{a.queue} {a.agent}",
            "strategy": a.strategy.value,
            "requests": len(a.requests),
            "nodes": a.nodes,
            "wall_time": a.model_dump(mode="json")["wall_time"],
            "su": a.su,
            "cost_usd": a.cost_usd,
            "slurm_jobs": 1,
            "makespan": "",
            "reason": a.reason,
        }
        for number, a in enumerate(plan.allocations, start=1)
    ]
    packed, single = plan.packed, plan.one_per_request
    rows += [_total("packed plan", packed), _total("one job per request", single)]
    rows.append(
        {
            **_total("saving", packed),
            "su": plan.su_saved,
            "cost_usd": round(single.cost_usd - packed.cost_usd, 2),
            "slurm_jobs": single.slurm_jobs - packed.slurm_jobs,
            "makespan": f"{single.makespan / packed.makespan:.1f}x sooner",
        }
    )
    return rows


@flow(name="plan-batch")
def plan_batch(requests: list[JobRequest]) -> BatchPlan:
    """Plan a batch as TACC's launcher runs it: compatible requests packed onto whole nodes, arrays
    where requests cannot share a node, exclusive ones alone; compared with one job per request
    (SUs, dollars, Slurm jobs, makespan under the per-user cap). Submits nothing.

    Example:
        ```python
        from flows.plan_batch import plan_batch
        plan = plan_batch([{"agent": "AlphaCal", "dataset_id": f"d{i}", "gpu_count": 1, "max_runtime": "1h",
                            "user_id": "jdoe", "system": "stampede3", "queue": "h100"} for i in range(24)])
        plan.packed.su, plan.one_per_request.su  # (24.0, 96.0)
        ```
    """
    plan = plan_request_batch(requests)
    create_table_artifact(
        table=plan_table(plan),
        key="batch-plan",
        description=f"Batch of {len(requests)} requests: {plan.packed.su:g} SUs packed instead of "
        f"{plan.one_per_request.su:g} one job per request ({plan.su_saved:g} saved)",
    )
    return plan
