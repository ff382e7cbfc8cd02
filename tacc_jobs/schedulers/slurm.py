"""Slurm reached over one multiplexed SSH connection: sbatch, squeue, sacct, scancel, sinfo.

Every command is an argv list; the remote shell sees each argument quoted. Multi-step work
(the exactly-once submission, reading many files) is a constant bash program whose inputs are
positional arguments, never text pasted into it.
"""

from __future__ import annotations

import base64
import re
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from typing import Protocol

from tacc_jobs.exceptions import (
    PermanentSchedulerError,
    SchedulerError,
    TransientSchedulerError,
)
from tacc_jobs.planning.catalog import system_queues
from tacc_jobs.schedulers.base import (
    SACCT_FIELDS,
    FileTail,
    JobSubmission,
    QueueResources,
    SchedulerJobState,
)
from tacc_jobs.schedulers.states import RUNNING_STATES, WAITING_STATES

JOB_ID = re.compile(r"\d+(?:_\d+)?")
JOB_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
SLURM_UNAVAILABLE = 75
IN_QUEUE_STATES = WAITING_STATES | RUNNING_STATES

# Exactly once: look the job name (the idempotency key) up in squeue, then sacct; submit only
# when neither knows it. A controller that cannot answer stops the submission (exit 75).
SUBMIT_PROGRAM = r"""
name=$1 work_dir=$2 script=$3; shift 3
found=$(squeue --me --noheader --states=all --name="$name" --format=%i) || exit 75
[ -z "$found" ] && { found=$(sacct --noheader -X --parsable2 --name="$name" --format=JobID --starttime=now-30days) || exit 75; }
if [ -n "$found" ]; then printf 'adopted %s\n' "$(printf '%s\n' "$found" | head -n1)"; exit 0; fi
mkdir -p -- "$work_dir" && cat > "$script" && sbatch --parsable "$@" "$script"
"""

READ_FILES_PROGRAM = r"""
limit=$1; shift
while [ $# -gt 1 ]; do
  file=$1 offset=$2; shift 2
  if [ -f "$file" ]; then
    size=$(stat -c %s -- "$file")
    start=$((size - limit)); [ "$offset" -gt "$start" ] && start=$offset
    [ "$start" -lt 0 ] && start=0; [ "$start" -gt "$size" ] && start=$size
    printf '%s\t' "$size"; tail -c +$((start + 1)) -- "$file" | head -c $((size - start)) | base64 -w0; printf '\n'
  else
    printf '%s\t\n' "$offset"
  fi
done
"""

_TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection reset|Connection refused|Connection timed out"
    r"|Transport endpoint|temporarily unavailable|Slurm backup controller in standby|Zero Bytes were transmitted"
    r"|slurm_persist_conn_open|Broken pipe",
    re.IGNORECASE,
)
_ADVICE = (
    (re.compile(r"Invalid account", re.I), "check the allocation (TaccCredentials.allocation, sbatch -A): it must be one of your active TACC projects"),
    (re.compile(r"invalid partition", re.I), "the queue does not exist on this system; use one listed in tacc_jobs/planning/tacc_queues.csv"),
    (re.compile(r"violates accounting/QOS policy|QOSMax|AssocMax", re.I), "the job exceeds a queue limit (nodes, wall time or jobs per user); lower the request or wait for running jobs"),
    (re.compile(r"time limit", re.I), "the wall time exceeds the queue's limit; lower max_runtime or choose another queue"),
    (re.compile(r"node configuration is not available", re.I), "no node set in this queue can satisfy the request; lower gpu_count"),
)


class Transport(Protocol):
    """What the Slurm backend needs of a connection: run one command, count commands."""

    commands_run: int

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run one command on the cluster."""

    def stream(self, argv: Sequence[str]) -> Iterator[str]:
        """Run one command on the cluster, yielding its output line by line."""


def scheduler_error(command: str, completed: subprocess.CompletedProcess[str]) -> SchedulerError:
    """A transient error to retry, or a permanent one that says what to fix."""
    message = (completed.stderr or completed.stdout).strip() or f"exit status {completed.returncode}"
    if completed.returncode == SLURM_UNAVAILABLE or _TRANSIENT.search(message):
        return TransientSchedulerError(f"{command}: {message}")
    advice = next((text for pattern, text in _ADVICE if pattern.search(message)), None)
    return PermanentSchedulerError(f"{command}: {message}" + (f" ({advice})" if advice else ""))


def _slurm_time(text: str) -> datetime | None:
    if text in ("", "N/A", "Unknown", "None"):
        return None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


class SlurmScheduler:
    """The scheduler interface on a Slurm cluster (TACC's, or the sandbox), over a transport.

    Example:
        ```python
        with TaccCredentials.load("ls6").get_client() as connection:
            slurm = SlurmScheduler(connection, system="ls6", scratch_root="/scratch/01234/jdoe/tacc")
            slurm.states(["123", "124"])
        ```
    """

    def __init__(self, transport: Transport, system: str, scratch_root: str) -> None:
        self.transport, self.system, self.scratch_root = transport, system, scratch_root

    def _run(self, argv: Sequence[str], stdin: str | None = None, label: str | None = None) -> str:
        completed = self.transport.run(["env", "TZ=UTC", *argv], stdin=stdin)
        if completed.returncode != 0:
            raise scheduler_error(label or argv[0], completed)
        return completed.stdout

    def submit(self, job: JobSubmission) -> str:
        """Upload the script and `sbatch --parsable` it, once: a retry adopts the job it finds."""
        if not JOB_NAME.fullmatch(job.name):
            raise PermanentSchedulerError(f"job name {job.name!r} is not a safe Slurm job name")
        script_path = f"{job.work_dir}/job.sbatch"
        options = ["-J", job.name, "-o", job.stdout_path, "-e", job.stderr_path, "-D", job.work_dir, *job.sbatch_args]
        output = self._run(["bash", "-c", SUBMIT_PROGRAM, "submit", job.name, job.work_dir, script_path, *options], stdin=job.script, label="sbatch")
        last = output.strip().splitlines()[-1] if output.strip() else ""
        job_id = last.removeprefix("adopted ").split(";")[0].strip()
        if not JOB_ID.fullmatch(job_id):
            raise SchedulerError(f"sbatch answered {output!r}, not a job id")
        return job_id

    def states(self, job_ids: Sequence[str]) -> dict[str, SchedulerJobState]:
        """One `squeue` for every job; one `sacct` for those that have left the queue."""
        wanted = [job_id for job_id in job_ids if JOB_ID.fullmatch(job_id)]
        if not wanted:
            return {}
        found: dict[str, SchedulerJobState] = {}
        squeue = self._run(["squeue", "--me", "--noheader", "--states=all", "--format=%i|%T|%r|%S"])
        for line in squeue.splitlines():
            job_id, state, reason, start = (line.split("|") + ["", "", ""])[:4]
            if job_id in wanted and state in IN_QUEUE_STATES:
                started = _slurm_time(start) if state not in WAITING_STATES else None  # %S of a pending job is a forecast
                found[job_id] = SchedulerJobState(job_id=job_id, state=state, reason=reason, start=started)
        left = [job_id for job_id in wanted if job_id not in found]
        if left:
            sacct = self._run(["sacct", "--noheader", "-X", "--parsable2", f"--jobs={','.join(left)}",
                               "--format=JobID,State,ExitCode,Start,End,Reason"])
            for line in sacct.splitlines():
                job_id, state, exit_code, start, end, reason = (line.split("|") + [""] * 5)[:6]
                if job_id in left:
                    found[job_id] = SchedulerJobState(job_id=job_id, state=state, exit_code=exit_code, reason=reason,
                                                      start=_slurm_time(start), end=_slurm_time(end))
        return found

    def cancel(self, job_id: str) -> None:
        """`scancel` the job; a job that has already ended is left alone."""
        if not JOB_ID.fullmatch(job_id):
            raise PermanentSchedulerError(f"{job_id!r} is not a Slurm job id")
        completed = self.transport.run(["scancel", job_id])
        message = completed.stderr
        if completed.returncode != 0 and not re.search(r"already completing or completed|Invalid job id", message):
            raise scheduler_error("scancel", completed)

    def accounting(self, start: datetime, end: datetime) -> Iterator[list[str]]:
        """`sacct --parsable2 --duplicates` for the window (every attempt, jobs and their steps), streamed.

        `TZ=UTC` makes sacct read the window and print its times in UTC whatever the login
        node's zone; `SLURM_TIME_FORMAT=standard` overrides a login profile's `relative` times.
        No `--state`: with one, the window would select jobs in that state during it instead.
        """
        from tacc_jobs.schedulers.base import sacct_rows

        window = [f"--starttime={start.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}",
                  f"--endtime={end.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}"]
        argv = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard", "sacct", "--noheader", "--parsable2", "--duplicates", *window,
                f"--format={','.join(SACCT_FIELDS)}"]
        try:
            yield from sacct_rows(self.transport.stream(argv))
        except subprocess.CalledProcessError as error:
            raise scheduler_error("sacct", subprocess.CompletedProcess(argv, error.returncode, "", error.stderr)) from None

    def resources(self) -> list[QueueResources]:
        """Per GPU queue of this system: nodes allocated/idle/total and idle GPUs (one `sinfo`)."""
        specs = {spec.queue: spec for spec in system_queues(self.system)}
        output = self._run(["sinfo", "--noheader", "--format=%R|%F"])
        resources = []
        for line in output.splitlines():
            queue, counts = line.split("|")
            if queue not in specs:
                continue
            allocated, idle, _other, total = (int(value) for value in counts.split("/"))
            resources.append(QueueResources(queue=queue, nodes_total=total, nodes_allocated=allocated,
                                            nodes_idle=idle, gpus_idle=idle * specs[queue].gpus_per_node))
        return resources

    def read_files(self, offsets: Mapping[str, int], limit: int = 65536) -> dict[str, FileTail]:
        """Read every file from its offset in one remote command."""
        if not offsets:
            return {}
        arguments = [str(part) for path, offset in offsets.items() for part in (path, offset)]
        output = self._run(["bash", "-c", READ_FILES_PROGRAM, "read-files", str(limit), *arguments], label="read-files")
        tails = {}
        for path, line in zip(offsets, output.splitlines()):
            size, _, encoded = line.partition("\t")
            tails[path] = FileTail(data=base64.b64decode(encoded).decode(errors="replace"), next_offset=int(size))
        return tails
