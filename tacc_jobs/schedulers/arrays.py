"""Job arrays: one `sbatch --array=<indexes>%K` whose task i runs request i's own job script.

Slurm names task i of array job 123 `123_i`; squeue without `-r` shows the tasks still pending
together (`123_[4-9%2]`), and sacct shows tasks that never started the same way once the array
ends. A record of an array member is tracked, cancelled and charged by its task's id.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from collections.abc import Iterable, Sequence

from tacc_jobs.launcher import CANCEL_FILE
from tacc_jobs.models import sbatch_directives
from tacc_jobs.schedulers.base import JobSubmission
from tacc_jobs.schedulers.job_script import (
    AgentRuntime,
    JobPaths,
    allocation_dir,
    render_member_script,
    script_header,
)
from tacc_jobs.schedulers.packed_script import PackedMember

ARRAY_OPTION = "--array"
_PENDING_TASKS = re.compile(r"(\d+)_\[([0-9,%:-]+)\]")


def array_task_id(array_job_id: str, index: int) -> str:
    """Slurm's id of one task of an array job.

    Example:
        >>> array_task_id("123", 4)
        '123_4'
    """
    return f"{array_job_id}_{index}"


def array_job_id(job_id: str) -> str:
    """The array job of a task id (`123_4`, `123_[4-9%2]`); a plain job id is its own.

    Example:
        >>> array_job_id("123_4"), array_job_id("123_[4-9%2]"), array_job_id("77")
        ('123', '123', '77')
    """
    return job_id.split("_", 1)[0]


def parse_array_spec(spec: str) -> tuple[list[int], int | None]:
    """The task indexes and the throttle of an `--array` value (`0-3,7`, `0-9:2%4`).

    Raises:
        ValueError: For a value that is not an index list.

    Example:
        >>> parse_array_spec("0-2,5%2")
        ([0, 1, 2, 5], 2)
        >>> parse_array_spec("1-7:3")
        ([1, 4, 7], None)
    """
    indexes_text, _, throttle = spec.partition("%")
    indexes: list[int] = []
    for part in indexes_text.split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        if not first.isdigit() or (last and not last.isdigit()) or (step and not step.isdigit()) or step == "0":
            raise ValueError(f"--array {spec!r}: expected indexes like 0-9%2")
        indexes += range(int(first), int(last or first) + 1, int(step or 1))
    if throttle and not throttle.isdigit():
        raise ValueError(f"--array {spec!r}: the throttle after % must be a number")
    return sorted(set(indexes)), int(throttle) if throttle else None


def array_spec(indexes: Iterable[int], throttle: int | None) -> str:
    """An `--array` value for these indexes: consecutive ones as ranges, then `%throttle`.

    Example:
        >>> array_spec([0, 1, 2, 4, 6, 7], 3)
        '0-2,4,6-7%3'
    """
    ranges: list[list[int]] = []
    for index in sorted(set(indexes)):
        if ranges and ranges[-1][1] == index - 1:
            ranges[-1][1] = index
        else:
            ranges.append([index, index])
    text = ",".join(str(first) if first == last else f"{first}-{last}" for first, last in ranges)
    return text + (f"%{throttle}" if throttle else "")


def with_array_indexes(sbatch_args: Sequence[str], indexes: Iterable[int]) -> list[str]:
    """Planned sbatch options with `--array` narrowed to `indexes`, its throttle kept.

    Example:
        >>> with_array_indexes(["-p", "gpu-a100", "--array", "0-4%2"], [0, 1, 3])
        ['-p', 'gpu-a100', '--array', '0-1,3%2']
    """
    arguments = list(sbatch_args)
    position = arguments.index(ARRAY_OPTION) + 1
    arguments[position] = array_spec(indexes, parse_array_spec(arguments[position])[1])
    return arguments


def reported_task_ids(job_id: str, wanted: Iterable[str]) -> list[str]:
    """The wanted jobs a squeue/sacct line of several array tasks speaks for: `123_[4-9%2]`
    (tasks pending together, or never started once the array ended) and a bare `123` while
    wanted tasks of array 123 are asked for (the array's record of its unstarted tasks).

    Example:
        >>> reported_task_ids("123_[4-6%2]", ["123_4", "123_6", "123_9", "8"])
        ['123_4', '123_6']
        >>> reported_task_ids("123", ["123_4", "8"])
        ['123_4']
    """
    if "_" not in job_id:
        return [task for task in wanted if task.startswith(f"{job_id}_")]
    match = _PENDING_TASKS.fullmatch(job_id)
    if match is None:
        return []
    indexes = set(parse_array_spec(match.group(2))[0])
    return [
        task
        for task in wanted
        if array_job_id(task) == match.group(1)
        and task.partition("_")[2].isdigit()
        and int(task.partition("_")[2]) in indexes
    ]


def render_array(
    name: str, members: Sequence[PackedMember], sbatch_args: list[str], scratch_root: str, runtime: AgentRuntime
) -> JobSubmission:
    """The submission of a job array named `name`: task i (`SLURM_ARRAY_TASK_ID`) runs the
    `member.sh` of the member whose `array_index` is i in that member's own job directory (its
    output appended to the member's `stdout.log`/`stderr.log`); the member scripts are files
    written before sbatch. A member whose `cancel` marker exists when its task starts does not
    run. `--array` lists the given members' indexes only, the planned throttle kept.

    Example:
        ```python
        submission = render_array("tacc-5f0e...", members, allocation.sbatch_args, "/scratch/u", runtime)
        ```
    """
    work_dir = allocation_dir(scratch_root, name)
    arguments = with_array_indexes(sbatch_args, [member.record.array_index or 0 for member in members])
    files: dict[str, str] = {}
    cases = []
    for member in members:
        paths = JobPaths.for_job(scratch_root, member.record.id, member.record.dataset_id)
        files[posixpath.join(paths.work_dir, "member.sh")] = render_member_script(
            member.record.id, member.request, paths, runtime
        )
        cases.append(f"  {member.record.array_index}) work_dir={shlex.quote(paths.work_dir)} ;;")
    stdout, stderr = posixpath.join(work_dir, "stdout-%a.log"), posixpath.join(work_dir, "stderr-%a.log")
    agents = sorted({member.request.agent for member in members})
    script = (
        "\n".join(
            [
                *script_header(name, stdout, stderr, sbatch_directives(arguments)),
                f"# job array of {len(members)} {'/'.join(agents)} requests, rendered by tacc-orchestrator: task i runs member i",
                'case "${SLURM_ARRAY_TASK_ID:?not a job array task}" in',
                *cases,
                '  *) echo "no member for array task $SLURM_ARRAY_TASK_ID" >&2; exit 1 ;;',
                "esac",
                f'if [ -e "$work_dir/{CANCEL_FILE}" ]; then echo "array task $SLURM_ARRAY_TASK_ID was cancelled before it started" >&2; exit 0; fi',
                'cd "$work_dir" || exit 1',
                "exec bash member.sh >>stdout.log 2>>stderr.log",
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
        sbatch_args=arguments,
        agent=agents[0],
        files=files,
    )
