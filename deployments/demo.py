"""The demo: one AlphaCal job on the sample dataset, on the embedded default, end to end.

Example:
    ```bash
    python -m deployments.demo            # plan, stage, submit, follow to COMPLETED, summary
    python -m deployments.demo --gpus 8   # two whole simulated nodes
    ```
"""

from __future__ import annotations

import argparse
import json
import time

from flows.submit import submit_job
from tasks.models import JobRequest

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
        {**SAMPLE_REQUEST, "gpu_count": args.gpus, "params": {**SAMPLE_REQUEST["params"], "rfi_strategy": args.rfi_strategy}}
    )
    started = time.monotonic()
    record = submit_job(request)
    elapsed = time.monotonic() - started
    print("\n=== tacc-orchestrator demo: job summary ===")
    print(f"job            {record.id}")
    print(f"status         {record.status.value}  (progress {record.progress:.0%})")
    print(f"where          {record.system}/{record.queue}, scheduler job {record.scheduler_job_id}, {record.nodes} node(s), {record.gpu_count} GPUs")
    print(f"runtime        {record.runtime.total_seconds():.1f} s on the cluster; {elapsed:.1f} s end to end" if record.runtime else "")
    print(f"SUs            charged {record.charged_su} (estimated {record.estimated_su} at full wall time)")
    print(f"output         {record.work_dir}/output")
    print(f"metrics        {json.dumps(record.result)}")


if __name__ == "__main__":
    main()
