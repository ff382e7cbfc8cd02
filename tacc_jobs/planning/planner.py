"""The planner: from a job request to queue, whole nodes, sbatch options, estimates and tips.

Pure code: it reads the catalog and the figures it is given, and touches nothing else.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from datetime import timedelta

from pydantic import BaseModel, Field

from tacc_jobs.agents import known_agents
from tacc_jobs.exceptions import PlanRefused
from tacc_jobs.models import JobRequest, Plan
from tacc_jobs.planning.catalog import QueueSpec, find_queue, system_queues
from tacc_jobs.planning.charges import billed_hours, charge_su
from tacc_jobs.staging.datasets import transfer_seconds
from tacc_jobs.walltime import format_walltime


class PlanningContext(BaseModel):
    """What the planner knows besides the request: rates, the user's history and budget."""

    usd_per_gpu_hour: float = 0.35
    usd_per_gpu_hour_by_type: dict[str, float] = Field(
        default_factory=dict,
        description="Dollar rates per GPU type (the catalog's gpu_type), as accounting charges them",
    )
    cost_warning_usd: float = 100.0
    su_budget: float | None = Field(default=None, description="The user's SU budget, if any")
    su_committed: float = Field(default=0.0, description="SUs the user has used or has running")
    past_runtimes_minutes: Sequence[float] = Field(
        default=(), description="Runtimes of this user's completed runs of the same agent"
    )
    account: str | None = None
    dataset_bytes: int | None = Field(default=None, description="Size of the dataset to stage")
    bandwidth_bytes_per_second: float | None = Field(default=None, description="Transfer rate to the system")
    bandwidth_measured: bool = Field(default=False, description="Whether the rate was measured on past transfers")
    layout_advice: Sequence[str] = ()


def nodes_needed(spec: QueueSpec, gpu_count: int) -> int:
    """Whole nodes for `gpu_count` GPUs: TACC never shares a node."""
    return math.ceil(gpu_count / spec.gpus_per_node)


def _fits(spec: QueueSpec, request: JobRequest) -> bool:
    return nodes_needed(spec, request.gpu_count) <= spec.max_nodes and request.max_runtime <= timedelta(
        hours=spec.max_wall_hours
    )


def check_agent(request: JobRequest) -> None:
    """Refuse a request whose agent has no job-script template.

    Raises:
        PlanRefused: When the agent is unknown.
    """
    if request.agent not in known_agents():
        raise PlanRefused(
            "agent", f"unknown agent {request.agent!r}; known agents: {', '.join(sorted(known_agents()))}"
        )


def cost_usd(spec: QueueSpec, gpus: int, duration: timedelta, context: PlanningContext) -> float:
    """Dollars for `gpus` allocated GPUs of `spec`'s type for `duration` (billed hours, 15 min at
    least), at the context's rate for that GPU type, else its default rate.

    Example:
        >>> cost_usd(find_queue("stampede3", "h100"), 4, timedelta(hours=1), PlanningContext())
        1.4
    """
    rate = context.usd_per_gpu_hour_by_type.get(spec.gpu_type, context.usd_per_gpu_hour)
    return round(gpus * billed_hours(duration) * rate, 2)


def choose_queue(request: JobRequest) -> QueueSpec:
    """The named queue, checked against its limits, or the first production queue that fits.

    Raises:
        PlanRefused: When the queue is unknown on the system or its limits are exceeded.
    """
    queues = system_queues(request.system.value)
    if request.queue is not None:
        spec = find_queue(request.system.value, request.queue)
        if spec is None:
            allowed = ", ".join(q.queue for q in queues)
            raise PlanRefused(
                "queue", f"{request.queue!r} is not a GPU queue of {request.system.value}; use one of {allowed}"
            )
        nodes = nodes_needed(spec, request.gpu_count)
        if nodes > spec.max_nodes:
            raise PlanRefused(
                "gpu_count",
                f"{request.gpu_count} GPUs need {nodes} nodes of {spec.gpus_per_node} GPUs in "
                f"{spec.system}/{spec.queue}, which allows at most {spec.max_nodes} nodes "
                f"({spec.max_nodes * spec.gpus_per_node} GPUs)",
            )
        if request.max_runtime > timedelta(hours=spec.max_wall_hours):
            raise PlanRefused(
                "max_runtime",
                f"{format_walltime(request.max_runtime)} exceeds the {spec.max_wall_hours:g} h limit of "
                f"{spec.system}/{spec.queue}; split longer work into jobs chained with --dependency=afterok",
            )
        return spec
    production = [spec for spec in queues if not spec.is_dev]
    for spec in production:
        if _fits(spec, request):
            return spec
    largest = max(production, key=lambda q: q.max_nodes * q.gpus_per_node)
    raise PlanRefused(
        "gpu_count" if request.max_runtime <= timedelta(hours=largest.max_wall_hours) else "max_runtime",
        f"no GPU queue of {request.system.value} fits {request.gpu_count} GPUs for "
        f"{format_walltime(request.max_runtime)}; the largest, {largest.queue}, allows "
        f"{largest.max_nodes * largest.gpus_per_node} GPUs for {largest.max_wall_hours:g} h",
    )


def sbatch_arguments(spec: QueueSpec, nodes: int, wall_time: timedelta, account: str | None) -> list[str]:
    """The sbatch options TACC requires, as an argv list: no `--gres`, no `--mem`."""
    arguments = ["-p", spec.queue, "-N", str(nodes), "--ntasks-per-node", "1", "-t", format_walltime(wall_time)]
    if account:
        arguments += ["-A", account]
    return arguments


def _tips(spec: QueueSpec, request: JobRequest, nodes: int, cost: float, context: PlanningContext) -> list[str]:
    tips = []
    idle = nodes * spec.gpus_per_node - request.gpu_count
    if idle:
        tips.append(
            f"{request.gpu_count} GPUs take {nodes} whole node(s) of {spec.gpus_per_node}: you pay for "
            f"{idle} idle GPU(s); {nodes * spec.gpus_per_node} GPUs cost the same."
        )
    dev = find_queue(spec.system, spec.dev_queue) if spec.dev_queue else None
    if dev and request.max_runtime <= timedelta(hours=dev.max_wall_hours) and nodes <= dev.max_nodes:
        tips.append(
            f"Under {dev.max_wall_hours:g} h: the {dev.queue} queue usually starts sooner "
            f"({dev.max_jobs_per_user} job(s) per user, {dev.max_nodes} nodes max)."
        )
    if context.past_runtimes_minutes:
        median = statistics.median(context.past_runtimes_minutes)
        tips.append(
            f"Your {len(context.past_runtimes_minutes)} earlier {request.agent} run(s) took a median of "
            f"{median:.1f} min; you asked for {request.max_runtime.total_seconds() / 60:.0f} min."
        )
        if median * 60 * 2 < request.max_runtime.total_seconds():
            tips.append("A shorter wall time (about 1.5x the median) often backfills sooner; billing is on time used.")
    if cost > context.cost_warning_usd:
        tips.append(f"Cost warning: up to ${cost:,.2f} if the job runs its full wall time.")
    tips.append(f"{spec.queue} allows {spec.max_jobs_per_user} job(s) per user; more only wait in the queue.")
    staging = staging_seconds(context)
    if staging is not None and context.dataset_bytes is not None and context.bandwidth_bytes_per_second:
        source = "measured on recent transfers" if context.bandwidth_measured else "default estimate"
        tips.append(
            f"Staging {context.dataset_bytes / 1e6:,.1f} MB takes about {staging:,.0f} s at "
            f"{context.bandwidth_bytes_per_second / 1e6:,.1f} MB/s ({source})."
        )
    tips.extend(context.layout_advice)
    return tips


def staging_seconds(context: PlanningContext) -> float | None:
    """Expected transfer time of the dataset, when its size and a bandwidth are known."""
    if context.dataset_bytes is None or not context.bandwidth_bytes_per_second:
        return None
    return transfer_seconds(context.dataset_bytes, context.bandwidth_bytes_per_second)


def plan_request(request: JobRequest, context: PlanningContext) -> Plan:
    """Plan a request: queue, nodes, directives, SU and dollar estimates, tips.

    Raises:
        PlanRefused: For an unknown agent, a queue whose limits are exceeded, or a budget overrun.

    Example:
        >>> from tacc_jobs.models import parse_request
        >>> plan = plan_request(parse_request({"agent": "AlphaCal", "dataset_id": "d1",
        ...     "gpu_count": 4, "max_runtime": "02:00:00", "user_id": "jdoe", "system": "ls6"}),
        ...     PlanningContext())
        >>> plan.queue, plan.nodes, plan.estimated_su
        ('gpu-a100', 2, 16.0)
    """
    check_agent(request)
    spec = choose_queue(request)
    nodes = nodes_needed(spec, request.gpu_count)
    allocated = nodes * spec.gpus_per_node
    estimated_su = charge_su(spec, nodes, request.max_runtime)
    cost = cost_usd(spec, allocated, request.max_runtime, context)
    if context.su_budget is not None and context.su_committed + estimated_su > context.su_budget:
        raise PlanRefused(
            "gpu_count",
            f"this job may charge {estimated_su:g} SUs; with {context.su_committed:g} SUs already used or "
            f"running, it would exceed {request.user_id}'s budget of {context.su_budget:g} SUs",
        )
    past = context.past_runtimes_minutes
    return Plan(
        system=request.system,
        host=spec.host,
        queue=spec.queue,
        gpu_model=spec.gpu_model,
        nodes=nodes,
        gpus_per_node=spec.gpus_per_node,
        gpu_count=request.gpu_count,
        allocated_gpus=allocated,
        wall_time=request.max_runtime,
        account=context.account,
        sbatch_args=sbatch_arguments(spec, nodes, request.max_runtime, context.account),
        estimated_su=estimated_su,
        estimated_cost_usd=cost,
        expected_runtime_minutes=statistics.median(past) if past else None,
        staging_estimate_seconds=staging_seconds(context),
        tips=_tips(spec, request, nodes, cost, context),
    )
