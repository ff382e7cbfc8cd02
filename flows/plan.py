"""plan-job: the plan, estimates and tips of a request, submitting nothing."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from tacc_jobs.models import JobRequest, Plan
from tasks.planning import plan_job_request
from tasks.run_context import request_run_name


def plan_markdown(request: JobRequest, plan: Plan) -> str:
    """The plan as markdown for the Prefect UI."""
    tips = "".join(f"- {tip}\n" for tip in plan.tips)
    directives = "\n".join(plan.sbatch_directives)
    return (
        f"## Plan: {request.agent} on {request.dataset_id} ({request.gpu_count} GPUs)\n\n"
        f"**{plan.system.value}/{plan.queue}** on {plan.host}: {plan.nodes} node(s) x {plan.gpus_per_node} "
        f"{plan.gpu_model}, wall time {plan.model_dump(mode='json')['wall_time']}\n\n"
        f"Estimate: **{plan.estimated_su:g} SUs**, **${plan.estimated_cost_usd:,.2f}** at full wall time"
        + (f"; expected runtime {plan.expected_runtime_minutes:.1f} min" if plan.expected_runtime_minutes else "")
        + f"\n\n```\n{directives}\n```\n\n### Tips\n{tips}"
    )


@flow(name="plan-job", flow_run_name=request_run_name("plan-job"))
def plan_job(request: JobRequest) -> Plan:
    """Plan a job: queue, whole nodes, sbatch directives, SU and dollar estimates, tips.

    Example:
        ```python
        from flows.plan import plan_job
        plan = plan_job({"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "gpu_count": 4,
                         "max_runtime": "02:00:00", "user_id": "jdoe", "system": "ls6"})
        plan.queue, plan.nodes, plan.estimated_su  # ('gpu-a100', 2, 16.0)
        ```
    """
    plan = plan_job_request(request)
    create_markdown_artifact(markdown=plan_markdown(request, plan), key="job-plan", description="Latest job plan")
    return plan
