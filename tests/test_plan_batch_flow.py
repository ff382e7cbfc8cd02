"""The plan-batch flow under a real Prefect server: the plan, its table artifact, nothing submitted."""

from __future__ import annotations

import pytest
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from blocks.database import open_job_store
from flows.plan_batch import plan_batch
from tacc_jobs.exceptions import PlanRefused

pytestmark = pytest.mark.usefixtures("prefect_server")

REQUEST = {
    "agent": "AlphaCal",
    "gpu_count": 1,
    "max_runtime": "1h",
    "user_id": "batchplanner",
    "system": "stampede3",
    "queue": "h100",
}


def test_plan_batch_writes_the_plan_and_its_saving_as_a_table_artifact() -> None:
    state = plan_batch([{**REQUEST, "dataset_id": f"d{index}"} for index in range(24)], return_state=True)
    plan = state.result()
    assert (plan.packed.su, plan.one_per_request.su, plan.packed.slurm_jobs) == (24.0, 96.0, 2)
    assert open_job_store().history("batchplanner").total == 0
    with get_client(sync_client=True) as client:  # this run's artifact: other tests plan batches on the same server
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["batch-plan"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
            )
        )
    assert artifact.type == "table" and "72 saved" in artifact.description
    assert '"saving"' in artifact.data and '"12.0x sooner"' in artifact.data


def test_plan_batch_refuses_a_request_beyond_its_queue() -> None:
    with pytest.raises(PlanRefused, match="at most 4 nodes"):
        plan_batch([{**REQUEST, "dataset_id": "d0", "gpu_count": 20}])


def test_plan_batch_refuses_a_batch_over_a_user_s_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TACC_ORCH_SU_BUDGETS", '{"batchplanner": 5}')  # 8 one-GPU hours are 8 SUs packed
    with pytest.raises(PlanRefused, match="may charge batchplanner 8 SUs .* more than the 5 SUs left"):
        plan_batch([{**REQUEST, "dataset_id": f"d{index}"} for index in range(8)])
    assert plan_batch([{**REQUEST, "dataset_id": f"d{index}"} for index in range(4)]).packed.su == 4.0
