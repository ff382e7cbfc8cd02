"""Through Tapis a batch is not packed: the plan's packed allocations go one job per request, and
the Tapis scheduler refuses what only a packed allocation needs, with a clear error."""

from __future__ import annotations

import pytest

from blocks.clusters import packed_placement
from flows.batch import one_per_request_reason
from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.models import parse_request
from tacc_jobs.planning.packing import Strategy, pack_requests
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.tapis import TapisScheduler

pytestmark = pytest.mark.usefixtures("tapis_block")


def test_a_packed_allocation_on_a_tapis_system_goes_one_job_per_request(tapis_scheduler: TapisScheduler) -> None:
    assert packed_placement("ls6") is None and packed_placement("local") == "local"
    requests = [
        parse_request(
            {
                "agent": "AlphaCal",
                "dataset_id": f"d{i}",
                "gpu_count": 1,
                "max_runtime": "1h",
                "user_id": "jdoe",
                "system": "ls6",
                "queue": "gpu-a100",
            }
        )
        for i in range(3)
    ]
    allocation = pack_requests(requests).allocations[0]
    assert allocation.strategy is Strategy.PACKED
    assert "Tapis" in (one_per_request_reason(allocation) or "")
    with pytest.raises(PermanentSchedulerError, match="packed allocations do not run through Tapis"):
        tapis_scheduler.cancel_member("/scratch/jobs/x")
    submission = JobSubmission(
        name="tacc-1",
        script="",
        work_dir="/s/a",
        stdout_path="/s/a/o",
        stderr_path="/s/a/e",
        agent="AlphaCal",
        sbatch_args=[],
        files={"/s/a/manifest.json": "{}"},
    )
    with pytest.raises(PermanentSchedulerError, match="packed allocations do not run through Tapis"):
        tapis_scheduler.submit(submission)
