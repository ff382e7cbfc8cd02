"""A packed allocation's submission: one batch script that runs the allocation's launcher on its
manifest, and each member's own `member.sh` in its ordinary job directory (the contract of
`tacc_jobs.launcher`)."""

from __future__ import annotations

import posixpath
import shlex
from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from tacc_jobs.launcher import Manifest, ManifestMember, launcher_lines
from tacc_jobs.models import JobRecord, JobRequest, sbatch_directives
from tacc_jobs.schedulers.base import JobSubmission
from tacc_jobs.schedulers.job_script import (
    AgentRuntime,
    JobPaths,
    allocation_dir,
    render_member_script,
    scheduler_job_name,
    script_header,
)
from tacc_jobs.walltime import parse_walltime


class PackedMember(BaseModel):
    """One member of a packed allocation: its record, its request and the GPUs it asks for."""

    record: JobRecord
    request: JobRequest


def slurm_only_directives(sbatch_args: list[str]) -> list[str]:
    """Lines of a packed allocation's script on Slurm: USR1 to the launcher a tenth of the wall
    time (at most 2 minutes) before it, so members stopped by the wall time are recorded
    TIMEOUT (a bare SIGTERM is a requeue or a cancel); logs kept across a requeue.

    Example:
        >>> slurm_only_directives(["-p", "h100", "-t", "01:00:00"])
        ['#SBATCH --signal=B:USR1@120', '#SBATCH --open-mode=append']
        >>> slurm_only_directives(["-t", "00:05:00"])[0]
        '#SBATCH --signal=B:USR1@30'
    """
    wall = parse_walltime(sbatch_args[sbatch_args.index("-t") + 1]) if "-t" in sbatch_args else timedelta(hours=1)
    warning = max(5, min(120, int(wall.total_seconds()) // 10))
    return [f"#SBATCH --signal=B:USR1@{warning}", "#SBATCH --open-mode=append"]


def render_allocation(
    name: str,
    members: list[PackedMember],
    sbatch_args: list[str],
    gpus_per_node: int,
    scratch_root: str,
    runtime: AgentRuntime,
    placement: Literal["srun", "local"],
) -> JobSubmission:
    """The submission of a packed allocation named `name`: the batch script (the allocation's
    `#SBATCH` lines, its logs in the allocation's directory, the interpreter and agents' home
    exported, then the launcher), with `manifest.json` and every member's `member.sh` as files
    written before sbatch. Members run in the order given (the planner's start order).

    Example:
        ```python
        submission = render_allocation("tacc-5f0e...", members, allocation.sbatch_args, 4, "/scratch/u", runtime, "srun")
        ```
    """
    work_dir = allocation_dir(scratch_root, name)
    files: dict[str, str] = {}
    manifest_members = []
    for member in members:
        paths = JobPaths.for_job(scratch_root, member.record.id, member.record.dataset_id)
        script = posixpath.join(paths.work_dir, "member.sh")
        files[script] = render_member_script(member.record.id, member.request, paths, runtime)
        manifest_members.append(
            ManifestMember(
                name=scheduler_job_name(member.record.id),
                gpus=member.request.gpu_count,
                work_dir=paths.work_dir,
                script=script,
                runtime_seconds=member.request.max_runtime.total_seconds(),
            )
        )
    manifest = Manifest(version=1, placement=placement, gpus_per_node=gpus_per_node, members=manifest_members)
    files[posixpath.join(work_dir, "manifest.json")] = manifest.model_dump_json(indent=2)
    stdout, stderr = posixpath.join(work_dir, "stdout.log"), posixpath.join(work_dir, "stderr.log")
    environment = {
        "TACC_PYTHON": runtime.python,
        "TACC_AGENT_HOME": runtime.agent_home,
        "TACC_AGENT_IMAGE": runtime.image or "",
    }
    agents = sorted({member.request.agent for member in members})
    script = (
        "\n".join(
            [
                *script_header(name, stdout, stderr, sbatch_directives(sbatch_args)),
                *(slurm_only_directives(sbatch_args) if placement == "srun" else []),
                f"# packed allocation of {len(members)} {'/'.join(agents)} requests, rendered by tacc-orchestrator",
                *(f"export {variable}={shlex.quote(value)}" for variable, value in environment.items()),
                *launcher_lines(work_dir),
            ]
        )
        + "\n"
    )
    return JobSubmission(
        name=name,
        script=script,
        work_dir=work_dir,
        stdout_path=stdout,
        stderr_path=stderr,
        sbatch_args=sbatch_args,
        agent=agents[0],
        files=files,
    )
