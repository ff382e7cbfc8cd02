"""Job scripts: layout TACC requires, and hostile values reaching the shell as inert text."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path

import pytest

from tacc_jobs.agents import AGENTS_DIR
from tacc_jobs.models import parse_request
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import AgentRuntime, JobPaths, render_job_script
from tacc_jobs.schedulers.local import LocalScheduler
from tests.conftest import state_of, wait_until

HOSTILE = "$(touch {marker}); `touch {marker}`; ' \" ; touch {marker} #"


def render(tmp_path: Path, params: dict[str, object]) -> tuple[str, JobPaths, uuid.UUID]:
    request = parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": "VLASS2.1.eb123456",
            "gpu_count": 4,
            "max_runtime": "00:05:00",
            "user_id": "jdoe",
            "system": "local",
            "params": params,
        }
    )
    plan = plan_request(request, PlanningContext())
    job_id = uuid.uuid4()
    paths = JobPaths.for_job(str(tmp_path / "scratch"), job_id, request.dataset_id)
    return (
        render_job_script(
            job_id, request, plan, paths, AgentRuntime(python=sys.executable, agent_home=str(AGENTS_DIR))
        ),
        paths,
        job_id,
    )


def test_script_layout(tmp_path: Path) -> None:
    script, paths, job_id = render(tmp_path, {"rfi_strategy": "low"})
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    directives = [i for i, line in enumerate(lines) if line.startswith("#SBATCH")]
    commands = [i for i, line in enumerate(lines) if line and not line.startswith("#")]
    assert directives and max(directives) < min(commands)
    assert f"#SBATCH -J tacc-{job_id.hex}" in lines
    assert "#SBATCH -p local-gpu" in lines and "#SBATCH -N 1" in lines and "#SBATCH -t 00:05:00" in lines
    assert f"#SBATCH -o {paths.stdout}" in lines
    assert "--gres" not in script and "apptainer exec --nv" in script


def test_hostile_params_reach_the_agent_as_text(tmp_path: Path) -> None:
    marker = Path("/tmp") / f"pwned-{uuid.uuid4().hex[:8]}"  # short: under xdist tmp_path is long, labels max 256
    hostile = HOSTILE.format(marker=marker)
    script, paths, _ = render(tmp_path, {"rfi_strategy": "low", "step_seconds": 0, "label": hostile})
    dataset = Path(paths.dataset_dir)
    dataset.mkdir(parents=True)
    (dataset / "chunk-000.csv").write_text("channel,real,imag\n1,1.0,0.5\n2,0.5,1.0\n")
    cluster = LocalScheduler(tmp_path / "cluster")
    job_id = cluster.submit(
        JobSubmission(
            name=f"t-{uuid.uuid4().hex[:8]}",
            script=script,
            work_dir=paths.work_dir,
            stdout_path=paths.stdout,
            stderr_path=paths.stderr,
            sbatch_args=["-p", "local-gpu", "-t", "00:01:00"],
        )
    )
    state = wait_until(lambda: (s := state_of(cluster, job_id)).state in ("COMPLETED", "FAILED") and s)
    assert state.state == "COMPLETED", Path(paths.stderr).read_text()
    assert json.loads(Path(paths.params).read_text())["label"] == hostile
    assert not marker.exists()
    assert json.loads(Path(paths.result).read_text())["samples"] == 2
    assert Path(paths.progress).read_text().strip() == "1.0000"


def test_slurm_job_block_triggers_waits_and_fetches_the_result(tmp_path: Path) -> None:
    from blocks.clusters import scheduler_for
    from blocks.jobs import BatchJob, JobFailed

    scratch = scheduler_for("local").scratch_root
    script, paths, _ = render(Path(scratch), {"rfi_strategy": "high", "step_seconds": 0})
    dataset = Path(paths.dataset_dir)
    dataset.mkdir(parents=True, exist_ok=True)
    (dataset / "chunk-000.csv").write_text("channel,real,imag\n1,1.0,0.5\n2,0.5,1.0\n3,9.0,9.0\n")

    def block(body: str) -> BatchJob:
        return BatchJob(
            system="local",
            progress_path=paths.progress,
            result_path=paths.result,
            poll_min_seconds=0.2,
            submission=JobSubmission(
                name=f"t-{uuid.uuid4().hex[:8]}",
                script=body,
                work_dir=paths.work_dir,
                stdout_path=paths.stdout,
                stderr_path=paths.stderr,
                sbatch_args=["-p", "local-gpu", "-t", "00:01:00"],
            ),
        )

    run = block(script).trigger()
    seen: list[float | None] = []
    final = run.wait_for_completion(on_poll=lambda observation: seen.append(observation.progress))
    assert final.status.value == "COMPLETED" and seen[-1] == 1.0
    assert run.fetch_result()["samples"] == 3
    failing = block("#!/bin/bash\nexit 3\n").trigger()
    failing.wait_for_completion()
    with pytest.raises(JobFailed, match="exit code 3"):
        failing.fetch_result()


def test_slurm_job_run_returns_early_while_the_job_waits_in_the_queue(tmp_path: Path) -> None:
    from blocks.clusters import scheduler_for
    from blocks.jobs import BatchJob

    cluster = scheduler_for("local")

    def submission(name: str, nodes: int) -> JobSubmission:
        work = tmp_path / name
        return JobSubmission(
            name=name,
            script="#!/bin/bash\nsleep 30\n",
            work_dir=str(work),
            stdout_path=str(work / "out"),
            stderr_path=str(work / "err"),
            sbatch_args=["-p", "local-gpu", "-N", str(nodes), "-t", "00:01:00"],
        )

    blocker = cluster.submit(submission("blocker", cluster.total_nodes))
    wait_until(lambda: state_of(cluster, blocker).state == "RUNNING")
    job = BatchJob(
        system="local",
        submission=submission("queued", 1),
        progress_path=str(tmp_path / "p"),
        result_path=str(tmp_path / "r"),
        poll_min_seconds=0.2,
        poll_max_seconds=0.4,
    )
    run = job.trigger()
    try:
        observation = run.wait_for_completion(pending_timeout=1.0)
        assert not observation.ended and observation.status.value == "QUEUING" and observation.reason == "Resources"
    finally:
        cluster.cancel(run.scheduler_job_id)
        cluster.cancel(blocker)
