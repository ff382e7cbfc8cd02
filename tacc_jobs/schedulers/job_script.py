"""Job scripts: the per-job paths on the cluster and the batch script rendered for an agent."""

from __future__ import annotations

import json
import posixpath
import shlex
import uuid

from pydantic import BaseModel

from tacc_jobs.agents import agent_template
from tacc_jobs.models import JobRecord, JobRequest, Plan


class JobPaths(BaseModel):
    """Where one job's files live on the cluster (POSIX paths under the scratch root)."""

    work_dir: str
    dataset_dir: str
    output_dir: str
    stdout: str
    stderr: str
    progress: str
    result: str
    params: str

    @classmethod
    def for_job(cls, scratch_root: str, job_id: uuid.UUID, dataset_id: str) -> JobPaths:
        """The layout `<scratch>/jobs/<job id>/...`, with the dataset under `<scratch>/datasets/`.

        Example:
            >>> JobPaths.for_job("/scratch/u", uuid.UUID(int=1), "d1").progress
            '/scratch/u/jobs/00000000-0000-0000-0000-000000000001/output/progress'
        """
        return cls.for_work_dir(
            posixpath.join(scratch_root, "jobs", str(job_id)), posixpath.join(scratch_root, "datasets", dataset_id)
        )

    @classmethod
    def for_work_dir(cls, work_dir: str, dataset_dir: str = "") -> JobPaths:
        """The layout inside a job's work directory."""
        output_dir = posixpath.join(work_dir, "output")
        return cls(
            work_dir=work_dir,
            dataset_dir=dataset_dir,
            output_dir=output_dir,
            stdout=posixpath.join(work_dir, "stdout.log"),
            stderr=posixpath.join(work_dir, "stderr.log"),
            progress=posixpath.join(output_dir, "progress"),
            result=posixpath.join(output_dir, "result.json"),
            params=posixpath.join(work_dir, "params.json"),
        )


class AgentRuntime(BaseModel):
    """How agents run on a system: the interpreter, the agents' directory, a container image."""

    python: str = "python3"
    agent_home: str
    image: str | None = None


def scheduler_job_name(job_id: uuid.UUID) -> str:
    """The Slurm job name, which doubles as the submission's idempotency key."""
    return f"tacc-{job_id.hex}"


def record_job_name(record: JobRecord) -> str:
    """The Slurm job name a record is tracked, found and cancelled by: its packed allocation's
    name when it is a member of one, else its own.

    Example:
        >>> from datetime import datetime, timezone
        >>> now = datetime(2026, 11, 28, tzinfo=timezone.utc)
        >>> record = JobRecord(id=uuid.UUID(int=1), user_id="jdoe", agent="AlphaCal", dataset_id="d1", system="local",
        ...     queue="local-gpu", status="QUEUED", gpu_count=1, nodes=1, created_at=now, updated_at=now)
        >>> record_job_name(record), record_job_name(record.model_copy(update={"allocation_name": "tacc-ab"}))
        ('tacc-00000000000000000000000000000001', 'tacc-ab')
    """
    return record.allocation_name or scheduler_job_name(record.id)


def allocation_dir(scratch_root: str, name: str) -> str:
    """A packed allocation's directory, `<scratch>/allocations/<allocation uuid>`, from its job name.

    Example:
        >>> allocation_dir("/s", scheduler_job_name(uuid.UUID(int=2)))
        '/s/allocations/00000000-0000-0000-0000-000000000002'
    """
    return posixpath.join(scratch_root, "allocations", str(uuid.UUID(hex=name.removeprefix("tacc-"))))


def submission_dir(scratch_root: str, record: JobRecord) -> str:
    """Where the record's submission keeps its script and lock: its allocation's directory when
    it is a packed member, else its own job directory."""
    if record.allocation_name:
        return allocation_dir(scratch_root, record.allocation_name)
    return JobPaths.for_job(scratch_root, record.id, record.dataset_id).work_dir


WRITE_PARAMS = 'printf \'%s\\n\' "$TACC_PARAMS_JSON" > "$TACC_PARAMS_FILE"'
"""The script line that hands the agent its parameters (the job script's, and a Tapis app's)."""


def job_environment(job_id: uuid.UUID, request: JobRequest, paths: JobPaths, runtime: AgentRuntime) -> dict[str, str]:
    """The environment of a job's agent: its directories, interpreter, image and parameters.

    Example:
        >>> from tacc_jobs.models import parse_request
        >>> request = parse_request({"agent": "AlphaCal", "dataset_id": "d1", "gpu_count": 1, "max_runtime": "1h", "user_id": "jdoe"})
        >>> env = job_environment(uuid.UUID(int=1), request, JobPaths.for_job("/s", uuid.UUID(int=1), "d1"), AgentRuntime(agent_home="/a"))
        >>> env["TACC_DATASET_DIR"], env["TACC_PARAMS_JSON"]
        ('/s/datasets/d1', '{"rfi_strategy": "medium"}')
    """
    return {
        "TACC_ORCH_JOB_ID": str(job_id),
        "TACC_JOB_DIR": paths.work_dir,
        "TACC_DATASET_DIR": paths.dataset_dir,
        "TACC_OUTPUT_DIR": paths.output_dir,
        "TACC_PROGRESS_FILE": paths.progress,
        "TACC_PARAMS_FILE": paths.params,
        "TACC_PARAMS_JSON": json.dumps(request.params.model_dump(mode="json"), sort_keys=True),
        "TACC_PYTHON": runtime.python,
        "TACC_AGENT_HOME": runtime.agent_home,
        "TACC_AGENT_IMAGE": runtime.image or "",
    }


def render_job_script(
    job_id: uuid.UUID, request: JobRequest, plan: Plan, paths: JobPaths, runtime: AgentRuntime
) -> str:
    """Render the batch script: `#!/bin/bash`, every `#SBATCH` line, quoted exports, the agent's body.

    Every value that reaches the shell goes through `shlex.quote`; identifiers were validated
    against strict patterns before the script is rendered.

    Example:
        ```python
        script = render_job_script(record.id, request, plan, paths, AgentRuntime(agent_home="/opt/agents"))
        ```
    """
    body = render_member_script(job_id, request, paths, runtime).removeprefix("#!/bin/bash\n")
    return "\n".join(
        [*script_header(scheduler_job_name(job_id), paths.stdout, paths.stderr, plan.sbatch_directives), body]
    )


def script_header(name: str, stdout: str, stderr: str, directives: list[str]) -> list[str]:
    """A batch script's first lines: `#!/bin/bash`, its name and logs, then its other `#SBATCH` lines.

    Example:
        >>> script_header("tacc-1", "/j/out", "/j/err", ["#SBATCH -p h100"])
        ['#!/bin/bash', '#SBATCH -J tacc-1', '#SBATCH -o /j/out', '#SBATCH -e /j/err', '#SBATCH -p h100']
    """
    return ["#!/bin/bash", f"#SBATCH -J {name}", f"#SBATCH -o {stdout}", f"#SBATCH -e {stderr}", *directives]


def render_member_script(job_id: uuid.UUID, request: JobRequest, paths: JobPaths, runtime: AgentRuntime) -> str:
    """A job script without `#SBATCH` lines (a packed member's `member.sh`, and the body of every
    job script): `#!/bin/bash`, the quoted exports, the parameters, the agent's body.

    Example:
        ```python
        member_sh = render_member_script(record.id, request, paths, AgentRuntime(agent_home="/opt/agents"))
        ```
    """
    lines = [
        "#!/bin/bash",
        f"# {request.agent} on {request.dataset_id} for {request.user_id}, rendered by tacc-orchestrator",
        *(
            f"export {name}={shlex.quote(value)}"
            for name, value in job_environment(job_id, request, paths, runtime).items()
        ),
        WRITE_PARAMS,
        agent_template(request.agent),
    ]
    return "\n".join(lines)
