"""The planner: queue choice, whole nodes, limits, estimates, tips and budgets."""

from datetime import timedelta

import pytest

from tacc_jobs.exceptions import PlanRefused
from tacc_jobs.models import parse_request
from tacc_jobs.planning.catalog import find_queue, load_catalog
from tacc_jobs.planning.charges import charge_su
from tacc_jobs.planning.planner import PlanningContext, plan_request

BASE = {"agent": "AlphaCal", "dataset_id": "VLASS2.1.eb123456", "max_runtime": "10:00:00", "user_id": "jdoe"}


def plan(context: PlanningContext | None = None, **fields: object):
    return plan_request(parse_request({**BASE, **fields}), context or PlanningContext())


def test_catalog_is_one_table_covering_every_system() -> None:
    systems = {spec.system for spec in load_catalog()}
    assert systems == {"local", "ls6", "frontera", "stampede3", "vista"}
    assert find_queue("ls6", "gpu-a100").gpus_per_node == 3
    assert find_queue("vista", "gh").max_nodes == 64
    assert find_queue("frontera", "rtx-dev").is_dev and not find_queue("frontera", "rtx").is_dev


@pytest.mark.parametrize(
    ("system", "gpus", "queue", "nodes"),
    [
        ("ls6", 1, "gpu-a100-small", 1),
        ("ls6", 3, "gpu-a100", 1),
        ("ls6", 4, "gpu-a100", 2),
        ("ls6", 24, "gpu-a100", 8),
        ("frontera", 5, "rtx", 2),
        ("stampede3", 16, "h100", 4),
        ("vista", 64, "gh", 64),
        ("local", 8, "local-gpu", 2),
    ],
)
def test_queue_and_whole_nodes(system: str, gpus: int, queue: str, nodes: int) -> None:
    result = plan(system=system, gpu_count=gpus)
    assert (result.queue, result.nodes) == (queue, nodes)
    assert result.allocated_gpus == nodes * find_queue(system, queue).gpus_per_node


def test_sbatch_arguments_are_what_tacc_accepts() -> None:
    result = plan(system="ls6", gpu_count=6, max_runtime="1-00:00:00")
    assert result.sbatch_args == ["-p", "gpu-a100", "-N", "2", "--ntasks-per-node", "1", "-t", "1-00:00:00"]
    assert not any("gres" in arg or "mem" in arg or "gpus" in arg for arg in result.sbatch_args)
    assert result.sbatch_directives[0] == "#SBATCH -p gpu-a100"


def test_allocation_goes_to_sbatch_dash_a() -> None:
    result = plan(PlanningContext(account="AST12345"), system="ls6", gpu_count=3)
    assert result.sbatch_args[-2:] == ["-A", "AST12345"]


def test_named_queue_over_its_node_limit_is_refused_with_the_field() -> None:
    with pytest.raises(
        PlanRefused,
        match=r"gpu_count: 27 GPUs need 9 nodes of 3 GPUs in ls6/gpu-a100, which allows at most 8 nodes \(24 GPUs\)",
    ):
        plan(system="ls6", queue="gpu-a100", gpu_count=27)


def test_named_queue_over_its_wall_time_is_refused() -> None:
    with pytest.raises(PlanRefused, match="max_runtime: 03:00:00 exceeds the 2 h limit of ls6/gpu-a100-dev"):
        plan(system="ls6", queue="gpu-a100-dev", gpu_count=3, max_runtime="3h")


def test_no_queue_fits_names_the_largest() -> None:
    with pytest.raises(PlanRefused, match="no GPU queue of ls6 fits 100 GPUs.*largest, gpu-a100, allows 24 GPUs"):
        plan(system="ls6", gpu_count=100)
    with pytest.raises(PlanRefused, match="^max_runtime: no GPU queue of vista fits"):
        plan(system="vista", gpu_count=1, max_runtime="3-00:00:00")


def test_queue_of_another_system_is_refused() -> None:
    with pytest.raises(
        PlanRefused, match="queue: 'rtx' is not a GPU queue of ls6; use one of gpu-a100-small, gpu-a100"
    ):
        plan(system="ls6", queue="rtx", gpu_count=1)


def test_unknown_agent_is_refused() -> None:
    with pytest.raises(PlanRefused, match="agent: unknown agent 'BetaCal'; known agents: AlphaCal"):
        plan(agent="BetaCal", system="ls6", gpu_count=1)


def test_su_formula_matches_tacc_worked_example() -> None:
    spec = find_queue("ls6", "gpu-a100")
    assert charge_su(spec, 4, timedelta(minutes=5)) == 4 * 0.25 * spec.su_per_node_hour
    assert charge_su(spec, 2, timedelta(hours=3)) == 2 * 3 * 4


def test_estimates_in_sus_and_dollars() -> None:
    result = plan(PlanningContext(usd_per_gpu_hour=0.5), system="ls6", gpu_count=4, max_runtime="02:00:00")
    assert result.estimated_su == 2 * 2 * 4
    assert result.estimated_cost_usd == 6 * 2 * 0.5


def test_dollar_estimate_uses_the_gpu_types_rate_as_accounting_does() -> None:
    rates = PlanningContext(usd_per_gpu_hour=0.5, usd_per_gpu_hour_by_type={"h100": 0.65})
    assert (
        plan(rates, system="ls6", queue="gpu-h100", gpu_count=2, max_runtime="02:00:00").estimated_cost_usd
        == 2 * 2 * 0.65
    )
    assert (
        plan(rates, system="ls6", gpu_count=3, max_runtime="02:00:00").estimated_cost_usd == 3 * 2 * 0.5
    )  # a100: the default


def test_tip_for_idle_gpus_only_when_nodes_are_partly_used() -> None:
    assert any("you pay for 2 idle GPU(s)" in tip for tip in plan(system="ls6", gpu_count=4).tips)
    assert not any("idle GPU" in tip for tip in plan(system="ls6", gpu_count=6).tips)


def test_tip_for_dev_queue_under_two_hours() -> None:
    assert any("gpu-a100-dev" in tip for tip in plan(system="ls6", gpu_count=3, max_runtime="01:30:00").tips)
    assert not any("-dev" in tip for tip in plan(system="ls6", gpu_count=3, max_runtime="03:00:00").tips)


def test_runtime_estimate_from_history() -> None:
    context = PlanningContext(past_runtimes_minutes=[20, 30, 40])
    result = plan(context, system="ls6", gpu_count=3, max_runtime="10:00:00")
    assert result.expected_runtime_minutes == 30
    assert any("3 earlier AlphaCal run(s) took a median of 30.0 min" in tip for tip in result.tips)
    assert any("shorter wall time" in tip for tip in result.tips)


def test_cost_warning_above_threshold() -> None:
    cheap = plan(PlanningContext(cost_warning_usd=2000), system="vista", gpu_count=64, max_runtime="48h")
    dear = plan(PlanningContext(cost_warning_usd=100), system="vista", gpu_count=64, max_runtime="48h")
    assert not any("Cost warning" in tip for tip in cheap.tips)
    assert any("Cost warning: up to $1,075.20" in tip for tip in dear.tips)


def test_budget_refuses_a_job_that_would_exceed_it() -> None:
    assert (
        plan(PlanningContext(su_budget=100, su_committed=84), system="ls6", gpu_count=6, max_runtime="2h").estimated_su
        == 16
    )
    with pytest.raises(
        PlanRefused,
        match="may charge 16 SUs; with 85 SUs already used or running, it would exceed jdoe's budget of 100 SUs",
    ):
        plan(PlanningContext(su_budget=100, su_committed=85), system="ls6", gpu_count=6, max_runtime="2h")
