"""The batch planner: many requests into few whole-node allocations, as TACC's launcher does.

TACC bills whole nodes and caps jobs per user per queue. Requests of the same system, queue,
agent and account are packed side by side onto whole nodes (each request on its own GPUs) and
stacked in time within the allocation's wall time; allocations span up to the queue's node
limit. Requests that fill whole nodes cannot share one: they go in a job array throttled to the
per-user cap. `"exclusive": true` requests run alone. The plan is compared with one job per
request on the same catalog, SU rule and dollar rates.

Pure code: it reads the catalog and the requests, and touches nothing else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import Enum
from itertools import groupby

from pydantic import BaseModel, Field

from tacc_jobs.exceptions import PlanRefused
from tacc_jobs.models import JobRequest, WallTime
from tacc_jobs.planning.catalog import QueueSpec
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.planning.planner import (
    PlanningContext,
    check_agent,
    choose_queue,
    cost_usd,
    nodes_needed,
    sbatch_arguments,
)


class Strategy(str, Enum):
    """How an allocation's requests run."""

    PACKED = "packed"
    ARRAY = "array"
    SINGLE = "single"


class Placement(BaseModel):
    """Where and when one request runs inside a packed allocation."""

    request: int = Field(description="Index of the request in the batch")
    gpus: dict[int, list[int]] = Field(description="GPU ids per node index of the allocation")
    start: timedelta = Field(description="Offset from the allocation's start")
    runtime: WallTime


class Allocation(BaseModel):
    """One Slurm submission: a packed allocation, a job array, or a request alone."""

    system: str
    queue: str
    agent: str
    account: str | None = None
    strategy: Strategy
    reason: str
    requests: list[int] = Field(description="Indexes of the requests in the batch")
    nodes: int = Field(description="Whole nodes of the allocation (of each array task)")
    wall_time: WallTime
    placements: list[Placement] = Field(default_factory=list, description="GPU assignment (packed and single)")
    sbatch_args: list[str]
    su: float = Field(description="SUs if it runs its full wall time (all array tasks)")
    request_su: list[float] = Field(
        description="Each request's share of `su` by the GPU-hours it asks for, in `requests` order"
    )
    cost_usd: float

    @property
    def durations(self) -> list[timedelta]:
        """The Slurm jobs it puts in the queue, by wall time: one, or one per array task."""
        return [self.wall_time] * (len(self.requests) if self.strategy is Strategy.ARRAY else 1)


class PlanFigures(BaseModel):
    """What a way of running the batch costs and how long it takes."""

    su: float
    cost_usd: float
    slurm_jobs: int = Field(description="sbatch submissions (an array is one)")
    makespan: WallTime = Field(description="Until the last job ends, under the per-user job cap, queue waits aside")


class BatchPlan(BaseModel):
    """The packed plan of a batch and the same batch one job per request."""

    allocations: list[Allocation]
    packed: PlanFigures
    one_per_request: PlanFigures

    @property
    def su_saved(self) -> float:
        """SUs the packed plan saves."""
        return round(self.one_per_request.su - self.packed.su, 4)

    def su_by_user(self, requests: Sequence[JobRequest]) -> dict[str, float]:
        """What the packed plan may charge each user: the shares of their requests.

        Example:
            >>> from tacc_jobs.models import parse_request
            >>> batch = [parse_request({"agent": "AlphaCal", "dataset_id": "d1", "gpu_count": 1, "max_runtime": runtime,
            ...     "user_id": user, "system": "stampede3", "queue": "h100"}) for user, runtime in (("ana", "3h"), ("bo", "1h"))]
            >>> plan = pack_requests(batch)
            >>> plan.packed.su, plan.su_by_user(batch)  # one node for 3 h, shared by GPU-hours asked
            (12.0, {'ana': 9.0, 'bo': 3.0})
        """
        shares: dict[str, float] = defaultdict(float)
        for allocation in self.allocations:
            for index, su in zip(allocation.requests, allocation.request_su):
                shares[requests[index].user_id] += su
        return {user: round(su, 4) for user, su in shares.items()}


class _Node:
    """A whole node in the making: when each of its GPUs is free again."""

    def __init__(self, gpus: int, block: int) -> None:
        self.free_at = [timedelta(0)] * gpus
        self.block = block

    def earliest(self, count: int) -> list[int]:
        return sorted(range(len(self.free_at)), key=lambda gpu: (self.free_at[gpu], gpu))[:count]

    def start(self, count: int) -> timedelta:
        return max(self.free_at[gpu] for gpu in self.earliest(count))

    def end(self) -> timedelta:
        return max(self.free_at)


def capped_makespan(durations: Sequence[timedelta], cap: int) -> timedelta:
    """Time until the last of `durations` ends when at most `cap` run at once (longest first).

    Example:
        >>> capped_makespan([timedelta(hours=1)] * 24, 2)
        datetime.timedelta(seconds=43200)
    """
    slots = [timedelta(0)] * cap
    for duration in sorted(durations, reverse=True):
        slots[slots.index(min(slots))] += duration
    return max(slots)


def _fills_nodes(spec: QueueSpec, request: JobRequest) -> bool:
    return request.gpu_count % spec.gpus_per_node == 0


def _whole_nodes(spec: QueueSpec, gpu_count: int, first: int = 0) -> dict[int, list[int]]:
    """GPU ids per node for a request spread over whole nodes from node `first`: full nodes, then the rest."""
    nodes = nodes_needed(spec, gpu_count)
    gpus = {first + node: list(range(spec.gpus_per_node)) for node in range(nodes - 1)}
    gpus[first + nodes - 1] = list(range(gpu_count - (nodes - 1) * spec.gpus_per_node))
    return gpus


def _alone(spec: QueueSpec, index: int, request: JobRequest) -> list[Placement]:
    return [
        Placement(
            request=index, gpus=_whole_nodes(spec, request.gpu_count), start=timedelta(0), runtime=request.max_runtime
        )
    ]


def _pack(spec: QueueSpec, indexed: list[tuple[int, JobRequest]]) -> list[tuple[list[_Node], list[Placement]]]:
    """Place requests on GPUs of whole nodes, stacking them in time within the longest runtime;
    then group the nodes into allocations of at most the queue's node limit."""
    wall = max(request.max_runtime for _, request in indexed)
    nodes: list[_Node] = []
    placed: list[tuple[int, dict[int, list[int]], timedelta, timedelta]] = []
    for index, request in sorted(indexed, key=lambda item: (-item[1].gpu_count, -item[1].max_runtime, item[0])):
        if request.gpu_count > spec.gpus_per_node:
            gpus = _whole_nodes(spec, request.gpu_count, first=len(nodes))
            nodes += [_Node(spec.gpus_per_node, block=len(nodes)) for _ in gpus]
            start = timedelta(0)
        else:
            fitting = (n for n, node in enumerate(nodes) if node.start(request.gpu_count) + request.max_runtime <= wall)
            target = next(fitting, None)
            if target is None:
                nodes.append(_Node(spec.gpus_per_node, block=len(nodes)))
                target = len(nodes) - 1
            gpus = {target: sorted(nodes[target].earliest(request.gpu_count))}
            start = nodes[target].start(request.gpu_count)
        for n, ids in gpus.items():
            for gpu in ids:
                nodes[n].free_at[gpu] = start + request.max_runtime
        placed.append((index, gpus, start, request.max_runtime))
    blocks = [list(members) for _, members in groupby(range(len(nodes)), key=lambda n: nodes[n].block)]
    bins: list[list[int]] = []
    for block in sorted(blocks, key=len, reverse=True):
        target = next((b for b in bins if len(b) + len(block) <= spec.max_nodes), None)
        if target is None:
            bins.append(target := [])
        target.extend(block)
    allocations = []
    for members in bins:
        local = {node: position for position, node in enumerate(members)}
        placements = [
            Placement(request=index, gpus={local[n]: ids for n, ids in gpus.items()}, start=start, runtime=runtime)
            for index, gpus, start, runtime in placed
            if all(n in local for n in gpus)
        ]
        allocations.append(([nodes[n] for n in members], sorted(placements, key=lambda p: p.request)))
    return allocations


def _group_allocations(
    spec: QueueSpec, agent: str, account: str | None, indexed: list[tuple[int, JobRequest]], context: PlanningContext
) -> list[Allocation]:
    by_index = dict(indexed)

    def allocation(
        strategy: Strategy, reason: str, requests: list[int], nodes: int, wall: timedelta, placements: list[Placement]
    ) -> Allocation:
        tasks = len(requests) if strategy is Strategy.ARRAY else 1
        su = round(tasks * charge_su(spec, nodes, wall), 4)
        gpu_hours = [by_index[index].gpu_count * by_index[index].max_runtime.total_seconds() for index in requests]
        arguments = sbatch_arguments(spec, nodes, wall, account)
        if strategy is Strategy.PACKED:  # one task per GPU: the members' srun steps run side by side
            arguments[arguments.index("--ntasks-per-node") + 1] = str(spec.gpus_per_node)
        if strategy is Strategy.ARRAY:
            arguments += ["--array", f"0-{tasks - 1}%{spec.max_jobs_per_user}"]
        return Allocation(
            system=spec.system,
            queue=spec.queue,
            agent=agent,
            account=account,
            strategy=strategy,
            reason=reason,
            requests=requests,
            nodes=nodes,
            wall_time=wall,
            placements=placements,
            sbatch_args=arguments,
            su=su,
            request_su=[round(su * share / sum(gpu_hours), 4) for share in gpu_hours],
            cost_usd=round(tasks * cost_usd(spec, nodes * spec.gpus_per_node, wall, context), 2),
        )

    result = [
        allocation(
            Strategy.SINGLE,
            "the request asks to run alone (exclusive)",
            [index],
            nodes_needed(spec, request.gpu_count),
            request.max_runtime,
            _alone(spec, index, request),
        )
        for index, request in indexed
        if request.exclusive
    ]
    shapes: dict[tuple[int, timedelta], list[tuple[int, JobRequest]]] = defaultdict(list)
    for index, request in indexed:
        if not request.exclusive and _fills_nodes(spec, request):
            shapes[(nodes_needed(spec, request.gpu_count), request.max_runtime)].append((index, request))
    for (nodes, wall), members in shapes.items():
        if len(members) == 1:
            index, request = members[0]
            result.append(
                allocation(
                    Strategy.SINGLE,
                    "it fills whole nodes and no other request has its shape",
                    [index],
                    nodes,
                    wall,
                    _alone(spec, index, request),
                )
            )
        else:
            result.append(
                allocation(
                    Strategy.ARRAY,
                    f"each request fills {nodes} whole node(s) of {spec.gpus_per_node} GPUs, so none can share a node: "
                    f"one array replaces {len(members)} submissions, throttled to the {spec.max_jobs_per_user}-job cap",
                    [index for index, _ in members],
                    nodes,
                    wall,
                    [],
                )
            )
    shareable = [
        (index, request) for index, request in indexed if not request.exclusive and not _fills_nodes(spec, request)
    ]
    if shareable:
        for nodes, placements in _pack(spec, shareable):
            wall = max(node.end() for node in nodes)
            requests = [placement.request for placement in placements]
            strategy, reason = (
                (
                    Strategy.PACKED,
                    (
                        f"{len(requests)} requests share {len(nodes)} whole node(s) of {spec.gpus_per_node} GPUs, each on its "
                        f"own GPUs, within {spec.max_nodes} nodes and the longest runtime"
                    ),
                )
                if len(requests) > 1
                else (Strategy.SINGLE, "no other request to share its node with")
            )
            result.append(allocation(strategy, reason, requests, len(nodes), wall, placements))
    return result


def pack_requests(
    requests: Sequence[JobRequest],
    context: PlanningContext | None = None,
    accounts: Mapping[str, str | None] | None = None,
    su_left: Mapping[str, float] | None = None,
) -> BatchPlan:
    """Plan a batch: group compatible requests, pack them, compare with one job per request.

    Args:
        requests: Validated requests; each gets its queue from the planner's `choose_queue`.
        context: Dollar rates (the planner's); the defaults otherwise.
        accounts: The allocation (`sbatch -A`) per system, when one is known.
        su_left: SUs left of each user's budget (budget minus charged and committed); users
            not listed have no budget.

    Raises:
        PlanRefused: For an unknown agent, a request beyond its queue's limits, or a user whose
            share of the packed plan exceeds the SUs left of their budget.

    Example:
        >>> from tacc_jobs.models import parse_request
        >>> batch = [parse_request({"agent": "AlphaCal", "dataset_id": f"d{i}", "gpu_count": 1,
        ...     "max_runtime": "1h", "user_id": "jdoe", "system": "stampede3", "queue": "h100"})
        ...     for i in range(24)]
        >>> plan = pack_requests(batch)
        >>> [(a.strategy.value, a.nodes) for a in plan.allocations]
        [('packed', 4), ('packed', 2)]
        >>> plan.packed.su, plan.one_per_request.su, str(plan.packed.makespan), str(plan.one_per_request.makespan)
        (24.0, 96.0, '1:00:00', '12:00:00')
    """
    context = context or PlanningContext()
    accounts = accounts or {}
    groups: dict[tuple[str, str, str, str | None], list[tuple[int, JobRequest]]] = defaultdict(list)
    specs: dict[tuple[str, str], QueueSpec] = {}
    for index, request in enumerate(requests):
        check_agent(request)
        spec = choose_queue(request)
        specs[(spec.system, spec.queue)] = spec
        account = accounts.get(spec.system)
        groups[(spec.system, spec.queue, request.agent, account)].append((index, request))
    allocations = [
        allocation
        for (system, queue, agent, account), indexed in groups.items()
        for allocation in _group_allocations(specs[(system, queue)], agent, account, indexed, context)
    ]
    singles = [
        _group_allocations(
            specs[(system, queue)], agent, account, [(index, request.model_copy(update={"exclusive": True}))], context
        )[0]
        for (system, queue, agent, account), indexed in groups.items()
        for index, request in indexed
    ]
    plan = BatchPlan(
        allocations=allocations, packed=_figures(allocations, specs), one_per_request=_figures(singles, specs)
    )
    for user, su in plan.su_by_user(requests).items():
        left = (su_left or {}).get(user)
        if left is not None and su > left:
            raise PlanRefused(
                "user_id",
                f"the batch may charge {user} {su:g} SUs (their share of the packed plan), "
                f"more than the {max(left, 0.0):g} SUs left of their budget",
            )
    return plan


def _figures(allocations: list[Allocation], specs: Mapping[tuple[str, str], QueueSpec]) -> PlanFigures:
    durations: dict[tuple[str, str], list[timedelta]] = defaultdict(list)
    for allocation in allocations:
        durations[(allocation.system, allocation.queue)] += allocation.durations
    return PlanFigures(
        su=round(sum(allocation.su for allocation in allocations), 4),
        cost_usd=round(sum(allocation.cost_usd for allocation in allocations), 2),
        slurm_jobs=len(allocations),
        makespan=max(capped_makespan(jobs, specs[queue].max_jobs_per_user) for queue, jobs in durations.items()),
    )
