"""The batch planner: packing onto whole nodes, arrays, exclusive requests, limits, the comparison."""

from datetime import timedelta

import pytest

from tacc_jobs.exceptions import PlanRefused
from tacc_jobs.models import JobRequest, parse_request
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.planning.packing import BatchPlan, Strategy, pack_requests
from tacc_jobs.planning.planner import PlanningContext

BASE = {
    "agent": "AlphaCal",
    "user_id": "jdoe",
    "system": "stampede3",
    "queue": "h100",
    "gpu_count": 1,
    "max_runtime": "1h",
}


def requests(count: int, **fields: object) -> list[JobRequest]:
    return [parse_request({**BASE, "dataset_id": f"d{index}", **fields}) for index in range(count)]


def every_request_once(plan: BatchPlan, count: int) -> None:
    assert sorted(index for allocation in plan.allocations for index in allocation.requests) == list(range(count))


def test_acceptance_24_single_gpu_hours_on_stampede3_h100() -> None:
    spec = find_queue("stampede3", "h100")
    assert (spec.gpus_per_node, spec.max_nodes, spec.max_jobs_per_user, spec.su_per_node_hour) == (4, 4, 2, 4.0)
    plan = pack_requests(requests(24))
    assert [(a.strategy, a.nodes, a.wall_time) for a in plan.allocations] == [
        (Strategy.PACKED, 4, timedelta(hours=1)),
        (Strategy.PACKED, 2, timedelta(hours=1)),
    ]
    every_request_once(plan, 24)
    assert plan.packed.su == 24.0 == 6 * charge_su(spec, 1, timedelta(hours=1))
    assert plan.one_per_request.su == 96.0 and plan.su_saved == 72.0
    assert (plan.packed.slurm_jobs, plan.one_per_request.slurm_jobs) == (2, 24)
    assert plan.one_per_request.makespan == timedelta(hours=12)
    assert plan.packed.makespan == timedelta(hours=1)
    assert (plan.packed.cost_usd, plan.one_per_request.cost_usd) == (8.4, 33.6)  # 0.35 $/GPU-hour by default
    rated = pack_requests(requests(24), PlanningContext(usd_per_gpu_hour_by_type={"h100": 0.65}))
    assert (rated.packed.cost_usd, rated.one_per_request.cost_usd) == (15.6, 62.4)


def test_each_request_has_its_own_gpus_and_the_sbatch_options_are_tacc_s() -> None:
    plan = pack_requests(requests(24), accounts={"stampede3": "AST24001"})
    first = plan.allocations[0]
    gpus = [(node, gpu) for placement in first.placements for node, ids in placement.gpus.items() for gpu in ids]
    assert len(gpus) == len(set(gpus)) == 16 and {node for node, _ in gpus} == {0, 1, 2, 3}
    assert first.sbatch_args == ["-p", "h100", "-N", "4", "--ntasks-per-node", "4", "-t", "01:00:00", "-A", "AST24001"]
    assert first.account == "AST24001" and "--gres" not in " ".join(first.sbatch_args)


def test_short_requests_stack_in_time_within_the_longest_runtime() -> None:
    batch = requests(1, max_runtime="4h") + requests(6, max_runtime="1h")
    plan = pack_requests(batch)
    [allocation] = plan.allocations
    assert (allocation.nodes, allocation.wall_time, allocation.su) == (1, timedelta(hours=4), 16.0)
    starts = sorted(placement.start for placement in allocation.placements if placement.request > 0)
    assert starts == [timedelta(0)] * 3 + [timedelta(hours=1)] * 3
    assert plan.one_per_request.su == 4 * 4 + 6 * 4


def test_exclusive_requests_run_alone() -> None:
    batch = requests(3) + requests(1, exclusive=True)
    plan = pack_requests(batch)
    alone = [a for a in plan.allocations if 3 in a.requests]
    assert [(a.strategy, a.requests, a.nodes) for a in alone] == [(Strategy.SINGLE, [3], 1)]
    assert "exclusive" in alone[0].reason
    assert [a.requests for a in plan.allocations if a.strategy is Strategy.PACKED] == [[0, 1, 2]]


def test_allocations_respect_the_node_limit_and_multi_node_requests_stay_whole() -> None:
    batch = requests(2, gpu_count=6) + requests(4)  # 6 GPUs: 2 nodes, 2 GPUs free on the second
    plan = pack_requests(batch)
    spec = find_queue("stampede3", "h100")
    assert all(a.nodes <= spec.max_nodes for a in plan.allocations)
    assert sum(a.nodes for a in plan.allocations) == 4  # the 1-GPU requests fill the free GPUs
    for allocation in plan.allocations:
        for placement in allocation.placements:
            assert sum(len(ids) for ids in placement.gpus.values()) == batch[placement.request].gpu_count
            assert all(node < allocation.nodes for node in placement.gpus)
    every_request_once(plan, 6)


def test_wall_time_never_exceeds_the_queue_limit() -> None:
    batch = requests(1, max_runtime="48h") + requests(8, max_runtime="20h")
    plan = pack_requests(batch)
    assert all(a.wall_time <= timedelta(hours=48) for a in plan.allocations)
    assert [(a.nodes, a.wall_time) for a in plan.allocations] == [(2, timedelta(hours=48))]  # 20 h twice per GPU
    with pytest.raises(PlanRefused, match="exceeds the 48 h limit"):
        pack_requests(requests(1, max_runtime="49h"))


def test_requests_that_fill_whole_nodes_become_an_array_throttled_to_the_cap() -> None:
    plan = pack_requests(requests(5, gpu_count=4))
    [array] = plan.allocations
    assert (array.strategy, array.nodes, array.requests) == (Strategy.ARRAY, 1, [0, 1, 2, 3, 4])
    assert array.sbatch_args[-2:] == ["--array", "0-4%2"] and "share a node" in array.reason
    assert plan.packed.su == plan.one_per_request.su == 20.0
    assert (plan.packed.slurm_jobs, plan.one_per_request.slurm_jobs) == (1, 5)
    assert plan.packed.makespan == plan.one_per_request.makespan == timedelta(hours=3)


def test_one_gpu_nodes_cannot_be_shared() -> None:
    plan = pack_requests(requests(3, system="vista", queue="gh"))
    assert [(a.strategy, a.sbatch_args[-1]) for a in plan.allocations] == [(Strategy.ARRAY, "0-2%20")]


def test_groups_split_by_queue_agent_and_account() -> None:
    batch = requests(2) + requests(2, queue="pvc") + requests(2, system="ls6", queue="gpu-a100")
    plan = pack_requests(batch, accounts={"ls6": "TG-1"})
    groups = {(a.system, a.queue, a.account): a.requests for a in plan.allocations}
    assert groups == {
        ("stampede3", "h100", None): [0, 1],
        ("stampede3", "pvc", None): [2, 3],
        ("ls6", "gpu-a100", "TG-1"): [4, 5],
    }


def test_unknown_agents_are_refused() -> None:
    with pytest.raises(PlanRefused, match="unknown agent 'Nope'"):
        pack_requests(requests(1, agent="Nope"))


def test_each_request_bears_its_share_by_gpu_hours_and_budgets_are_checked_on_the_shares() -> None:
    batch = requests(1, user_id="ana", max_runtime="3h") + requests(3, user_id="bo")
    plan = pack_requests(batch)
    [allocation] = plan.allocations
    assert (allocation.su, allocation.request_su) == (12.0, [6.0, 2.0, 2.0, 2.0])
    assert plan.su_by_user(batch) == {"ana": 6.0, "bo": 6.0}  # packed, bo pays 6 instead of 3 whole nodes' 12
    assert pack_requests(batch, su_left={"ana": 6.0, "bo": 6.0}).packed.su == 12.0  # exactly at the budget fits
    with pytest.raises(PlanRefused, match=r"user_id: the batch may charge bo 6 SUs .* more than the 5.5 SUs left"):
        pack_requests(batch, su_left={"bo": 5.5})
    with pytest.raises(PlanRefused, match="more than the 0 SUs left"):
        pack_requests(batch, su_left={"ana": -2.0})  # already over budget
