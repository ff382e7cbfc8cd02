"""The demo: one AlphaCal job on the sample dataset, on the embedded default, through the
`submit-job` deployment of the local stack (so its run, logs and artifacts are in the UI).

Example:
    ```bash
    scripts/stack.sh up && python -m deployments.demo        # what `make demo` does
    python -m deployments.demo --gpus 8 --rfi-strategy low    # two whole simulated nodes
    ```
"""

from __future__ import annotations

import argparse
import json
import time

from prefect.deployments import run_deployment
from prefect.settings import PREFECT_UI_URL

from blocks.database import open_job_store
from tacc_jobs.models import JobRequest
from tacc_jobs.settings import get_settings

SAMPLE_REQUEST = {
    "agent": "AlphaCal",
    "dataset_id": "VLASS2.1.eb123456",
    "params": {"rfi_strategy": "high", "step_seconds": 1.0},
    "gpu_count": 4,
    "max_runtime": "00:10:00",
    "user_id": "demo",
    "system": "local",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=SAMPLE_REQUEST["gpu_count"])
    parser.add_argument("--rfi-strategy", default=SAMPLE_REQUEST["params"]["rfi_strategy"])
    args = parser.parse_args()
    request = JobRequest.model_validate(
        {
            **SAMPLE_REQUEST,
            "gpu_count": args.gpus,
            "params": {**SAMPLE_REQUEST["params"], "rfi_strategy": args.rfi_strategy},
        }
    )
    started = time.monotonic()
    flow_run = run_deployment(
        "submit-job/submit-job", parameters={"request": request.model_dump(mode="json")}, timeout=None
    )
    elapsed = time.monotonic() - started
    record = open_job_store().find_by_flow_run(flow_run.id)
    print("\n=== tacc-orchestrator demo: job summary ===")
    print(
        f"flow run       {flow_run.name}: {flow_run.state_name}  {PREFECT_UI_URL.value()}/runs/flow-run/{flow_run.id}"
    )
    print(f"UI password    the auth string in {get_settings().home / 'stack' / 'api-auth'}")
    if record is None:
        raise SystemExit("the flow run recorded no job; see its logs in the UI")
    print(f"job            {record.id}")
    print(f"status         {record.status.value}  (progress {record.progress:.0%})")
    print(
        f"where          {record.system}/{record.queue}, scheduler job {record.scheduler_job_id}, {record.nodes} node(s), {record.gpu_count} GPUs"
    )
    if record.runtime:
        print(f"runtime        {record.runtime.total_seconds():.1f} s on the cluster; {elapsed:.1f} s end to end")
    print(f"SUs            charged {record.charged_su} (estimated {record.estimated_su} at full wall time)")
    print(f"output         {record.work_dir}/output")
    print(f"metrics        {json.dumps(record.result)}")
    if record.status.value != "COMPLETED":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
