"""Slurm reached over one multiplexed SSH connection: sbatch, squeue, sacct, scancel, sinfo.

Every command is an argv list; the remote shell sees each argument quoted. Multi-step work
(the exactly-once submission, reading many files) is a constant bash program whose inputs are
positional arguments, never text pasted into it.
"""

from __future__ import annotations

import base64
import posixpath
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Protocol

from tacc_jobs.exceptions import (
    JobCapReached,
    PermanentSchedulerError,
    SchedulerError,
    TransientSchedulerError,
)
from tacc_jobs.launcher import CANCEL_FILE
from tacc_jobs.planning.catalog import system_queues
from tacc_jobs.schedulers.arrays import array_job_id, reported_task_ids
from tacc_jobs.schedulers.base import (
    SACCT_FIELDS,
    FileTail,
    JobsSnapshot,
    JobSubmission,
    QueueResources,
    SchedulerJobState,
)
from tacc_jobs.schedulers.states import (
    MAY_BE_REQUEUED,
    RUNNING_STATES,
    WAITING_STATES,
    ended_result_offsets,
)
from tacc_jobs.walltime import utcnow

JOB_ID = re.compile(r"\d+(?:_\d+)?")
JOB_NAME = re.compile(r"[A-Za-z0-9._-]{1,128}")
SLURM_UNAVAILABLE = 75
IN_QUEUE_STATES = WAITING_STATES | RUNNING_STATES
ENDS_SQUEUE_TELLS_WHOLE = frozenset({"COMPLETED", "CANCELLED"})
"""Ends squeue reports as fully as accounting (other ends need accounting's exit code)."""
DEFAULT_LOOKBACK = timedelta(days=1)
SLURM_ENV = ["env", "TZ=UTC", "SLURM_TIME_FORMAT=standard"]
"""Every Slurm command runs with these: times in UTC, never a login profile's `relative` format."""
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# One line per job, the same fields from squeue and from sacct, the name last (it may hold '|').
SQUEUE_FORMAT = "%i|%T|%r|%S|%e|%V|%j"
SACCT_FORMAT = "JobID,State,Reason,Start,End,Submit,JobName"

# Exactly once, under every drop: each job name (the idempotency key) has a lock file in its job
# directory. Holding it, the program looks the name up (squeue, then sacct since the job was
# recorded) and submits only when neither knows it and watch-jobs has not abandoned the name. A
# retry racing an sbatch still in flight waits for the lock, then finds that job. `abandon` takes
# the same lock: it finds the job, or fences the name so that no later submission runs it. A
# controller or accounting daemon that cannot answer stops the program (exit 75: retry). The
# files to write come on stdin, one per line: path, a tab, the content in base64 (the script as
# `job.sbatch`, then a packed allocation's manifest and member scripts), all before sbatch.
SUBMIT_PROGRAM = r"""
set -o pipefail
mode=$1 name=$2 work_dir=$3 since=$4; shift 4
mkdir -p -- "$work_dir" || exit 1
exec 9>>"$work_dir/.submit.lock" || exit 1
flock -w 600 9 || exit 75
found=$(squeue --me --noheader --states=all --name="$name" --format="$SQUEUE_FORMAT") || exit 75
source=squeue
if [ -z "$found" ]; then
  found=$(sacct --noheader -X --parsable2 --name="$name" --starttime="$since" --format="$SACCT_FORMAT") || exit 75
  source=sacct
fi
if [ -n "$found" ]; then printf 'found %s %s\n' "$source" "$(printf '%s\n' "$found" | sort -t'|' -k6,6 | tail -n1)"; exit 0; fi
if [ "$mode" = abandon ]; then : > "$work_dir/.abandoned" && echo abandoned; exit; fi
if [ -e "$work_dir/.abandoned" ]; then
  echo "sbatch: $name was abandoned by watch-jobs (its record ended before the job was submitted)" >&2; exit 3
fi
files=() contents=() complete=
while IFS=$'\t' read -r file data; do
  if [ "$file" = "$END_OF_FILES" ]; then complete=1; break; fi
  files+=("$file") contents+=("$data")
done
if [ -z "$complete" ]; then
  echo "sbatch: the files to write came cut short (the connection dropped); nothing written, nothing submitted" >&2; exit 75
fi
for i in "${!files[@]}"; do
  mkdir -p -- "${files[$i]%/*}" && printf '%s' "${contents[$i]}" | base64 -d > "${files[$i]}" || exit 1
done
sbatch --parsable "$@" "$work_dir/job.sbatch"
"""
END_OF_FILES = "--end-of-files--"
"""The last line of `SUBMIT_PROGRAM`'s stdin: files cut short by a dropped connection are never submitted."""
CANCEL_MEMBER_PROGRAM = 'mkdir -p -- "$1" && : > "$1/$2"'
# One array task, only if it has the name: `scancel --name=<name> 123_4` would cancel every task
# of 123 still pending (Slurm 22.05), so the name is checked first and scancel gets the task id alone.
CANCEL_TASK_PROGRAM = r"""
listed=$(squeue --noheader --array --states=all --jobs="$1" --format=%j) || exit
[ "${listed%%$'\n'*}" = "$2" ] || exit 0
exec scancel "$1"
"""


# One poll, whatever the number of jobs and files; its input comes on stdin (a command line
# holds at most 128 KiB): "<id> <name>" lines (both checked safe), a "--" line, then file and
# offset pairs, each NUL-terminated. It prints `squeue <output, base64>` (array tasks one per
# line); for the jobs squeue does not settle (SETTLED: the states it tells whole), `sacct <status>
# <output, base64>` (an array task asked as its array job, which lists every task and those that
# never started, `123_[4-9%2]`; a failed sacct does not stop the poll: the caller decides); then
# `file <size>\t<tail, base64>` per file, in order. A missing file costs no process. A failed
# squeue stops it with squeue's status. sacct is asked in chunks of $2 jobs (one `sacct <status>
# ...` line each): one argument holds at most 128 KiB, so --name= of every job left after an
# outage (thousands of names) would not run at all.
POLL_PROGRAM = r"""
limit=$1 chunk=$2
declare -A want
while IFS=' ' read -r id name && [ "$id" != "--" ]; do want[$id]=$name; done
if [ ${#want[@]} -gt 0 ]; then
  queue=$(squeue --me --noheader --array --states=all --format="$SQUEUE_FORMAT") || exit
  printf 'squeue %s\n' "$(printf '%s' "$queue" | base64 -w0)"
  while IFS='|' read -r id state _ _ _ _ name; do
    if [ -n "$id" ] && [ "${want[$id]-}" = "$name" ] && [[ " $SETTLED " == *" $state "* ]]; then unset 'want[$id]'; fi
  done <<< "$queue"
  left=("${!want[@]}")
  for ((first = 0; first < ${#left[@]}; first += chunk)); do
    part=("${left[@]:first:chunk}")
    ids=$(for id in "${part[@]}"; do printf '%s\n' "${id%%_*}"; done | sort -u | paste -sd,)
    names=$(for id in "${part[@]}"; do printf '%s\n' "${want[$id]}"; done | sort -u | paste -sd,)
    accounted=$(sacct --noheader -X --parsable2 --jobs="$ids" --name="$names" --format="$ACCOUNTED_FORMAT"); status=$?
    printf 'sacct %s %s\n' "$status" "$(printf '%s' "$accounted" | base64 -w0)"
  done
fi
while IFS= read -r -d '' file && IFS= read -r -d '' offset; do
  if [ -f "$file" ]; then
    size=$(stat -c %s -- "$file")
    start=$((size - limit)); [ "$offset" -gt "$start" ] && start=$offset
    [ "$start" -lt 0 ] && start=0; [ "$start" -gt "$size" ] && start=$size
    printf 'file %s\t' "$size"; tail -c +$((start + 1)) -- "$file" | head -c $((size - start)) | base64 -w0; printf '\n'
  else
    printf 'file %s\t\n' "$offset"
  fi
done
"""
NAMES_PER_COMMAND = 500
"""Job names in one `--name=` argument: 500 of at most 128 characters stay below Linux's 128 KiB
for one argument (MAX_ARG_STRLEN), with room to spare."""
SETTLED_BY_SQUEUE = IN_QUEUE_STATES | MAY_BE_REQUEUED
"""States squeue tells whole: a job in one of them needs no look-up in accounting."""
ACCOUNTED_FORMAT = "JobID,State,ExitCode,Start,End,Reason,JobName"

_TRANSIENT = re.compile(
    r"Socket timed out|Unable to contact slurm controller|Connection reset|Connection refused|Connection timed out"
    r"|Transport endpoint|temporarily unavailable|Slurm backup controller in standby|Zero Bytes were transmitted"
    r"|slurm_persist_conn_open|Broken pipe",
    re.IGNORECASE,
)
_JOB_CAP = re.compile(r"(?:QOS|Assoc)(?:Max|Grp)(?:SubmitJobs?|Jobs)\w*Limit")
"""The names sbatch gives a refusal over a count of queued jobs (QOSMaxSubmitJobPerUserLimit,
AssocMaxSubmitJobLimit, ...), which waiting fixes, unlike a size or time limit."""
_ADVICE = (
    (
        re.compile(r"Invalid account", re.I),
        "check the allocation (TaccCredentials.allocation, sbatch -A): it must be one of your active TACC projects",
    ),
    (
        re.compile(r"invalid partition", re.I),
        "the queue does not exist on this system; use one listed in tacc_jobs/planning/tacc_queues.csv",
    ),
    (
        re.compile(r"violates accounting/QOS policy|QOSMax|AssocMax", re.I),
        "the job exceeds a queue limit (nodes, wall time or jobs per user); lower the request or wait for running jobs",
    ),
    (
        re.compile(r"time limit", re.I),
        "the wall time exceeds the queue's limit; lower max_runtime or choose another queue",
    ),
    (
        re.compile(r"node configuration is not available", re.I),
        "no node set in this queue can satisfy the request; lower gpu_count",
    ),
)


class Transport(Protocol):
    """What the Slurm backend needs of a connection: run one command, count commands."""

    commands_run: int

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one command on the cluster."""

    def stream(self, argv: Sequence[str]) -> Iterator[str]:
        """Run one command on the cluster, yielding its output line by line."""


def scheduler_error(command: str, completed: subprocess.CompletedProcess[str]) -> SchedulerError:
    """A transient error to retry, a cap on queued jobs to wait out, or a permanent refusal that
    says what to fix."""
    message = (completed.stderr or completed.stdout).strip() or f"exit status {completed.returncode}"
    if completed.returncode == SLURM_UNAVAILABLE or _TRANSIENT.search(message):
        return TransientSchedulerError(f"{command}: {message}")
    if _JOB_CAP.search(message):
        return JobCapReached(f"{command}: {message}")
    advice = next((text for pattern, text in _ADVICE if pattern.search(message)), None)
    return PermanentSchedulerError(f"{command}: {message}" + (f" ({advice})" if advice else ""))


def _first_submitted(state: SchedulerJobState, kept: SchedulerJobState) -> bool:
    """Whether `state` replaces `kept` as its name's job: an earlier submission, not the same job
    told again by accounting (squeue's word on a job in the queue stands)."""
    if state.job_id == kept.job_id:
        return False
    return (state.submit or EPOCH) < (kept.submit or EPOCH)


def _slurm_time(text: str) -> datetime | None:
    if text in ("", "N/A", "Unknown", "None"):
        return None
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _sacct_time_argument(moment: datetime) -> str:
    """A time for `sacct --starttime`, in UTC (every command runs with TZ=UTC)."""
    return f"{moment.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}"


def _parse_job_line(line: str, in_queue: bool) -> SchedulerJobState:
    """One `SQUEUE_FORMAT`/`SACCT_FORMAT` line: id|state|reason|start|end|submit|name."""
    job_id, state, reason, start, end, submit, name = (line.split("|", 6) + [""] * 6)[:7]
    waiting = state in WAITING_STATES  # %S of a pending job is a forecast, %e of a running one too
    return SchedulerJobState(
        job_id=job_id,
        name=name,
        state=state,
        reason=reason,
        in_queue=in_queue,
        start=None if waiting else _slurm_time(start),
        end=_slurm_time(end) if state not in IN_QUEUE_STATES else None,
        submit=_slurm_time(submit),
    )


def _for_wanted(wanted: Mapping[str, str], states: Iterable[SchedulerJobState]) -> Iterator[SchedulerJobState]:
    """The states of wanted jobs among squeue or sacct lines: a line of one job by its id and
    name (another name under the id is a reused id, not ours); a line of several array tasks
    (`123_[4-9%2]`, or the array's own `123`) for each wanted task it covers that no line of its
    own reports, under the task's id.

    Example:
        >>> lines = [SchedulerJobState(job_id="9_[1-3]", name="a", state="CANCELLED"),
        ...          SchedulerJobState(job_id="9_2", name="a", state="RUNNING")]
        >>> [(state.job_id, state.state) for state in _for_wanted({"9_2": "a", "9_3": "a"}, lines)]
        [('9_2', 'RUNNING'), ('9_3', 'CANCELLED')]
    """
    own, shared = {}, {}
    for state in states:
        if wanted.get(state.job_id) == state.name:
            own[state.job_id] = state
            continue
        for task in reported_task_ids(state.job_id, wanted):
            if wanted[task] == state.name:
                shared.setdefault(task, state.model_copy(update={"job_id": task}))
    yield from own.values()
    yield from (state for task, state in shared.items() if task not in own)


class SlurmScheduler:
    """The scheduler interface on a Slurm cluster (TACC's, or the sandbox), over a transport.

    Example:
        ```python
        with TaccCredentials.load("ls6").get_client() as connection:
            slurm = SlurmScheduler(connection, system="ls6", scratch_root="/scratch/01234/jdoe/tacc")
            slurm.states({"123": "tacc-6f1c...", "124": "tacc-8a0d..."})
        ```
    """

    def __init__(self, transport: Transport, system: str, scratch_root: str) -> None:
        self.transport, self.system, self.scratch_root = transport, system, scratch_root

    def _run(self, argv: Sequence[str], stdin: str | None = None, label: str | None = None) -> str:
        completed = self.transport.run([*SLURM_ENV, *argv], stdin=stdin)
        if completed.returncode != 0:
            raise scheduler_error(label or argv[0], completed)
        return completed.stdout

    def _submit_program(
        self, mode: str, name: str, work_dir: str, since: datetime, *options: str, script: str | None = None
    ) -> SchedulerJobState | str | None:
        """Run `SUBMIT_PROGRAM`: the job found by name, the new job's id, or None once abandoned."""
        if not JOB_NAME.fullmatch(name):
            raise PermanentSchedulerError(f"job name {name!r} is not a safe Slurm job name")
        output = self._run(
            [
                "env",
                f"SQUEUE_FORMAT={SQUEUE_FORMAT}",
                f"SACCT_FORMAT={SACCT_FORMAT}",
                f"END_OF_FILES={END_OF_FILES}",
                "bash",
                "-c",
                SUBMIT_PROGRAM,
                mode,
                mode,
                name,
                work_dir,
                _sacct_time_argument(since),
                *options,
            ],
            stdin=script,
            label="sbatch" if mode == "submit" else "abandon",
        )
        last = output.strip().splitlines()[-1] if output.strip() else ""
        if last.startswith("found "):
            source, _, line = last.removeprefix("found ").partition(" ")
            return _parse_job_line(line, in_queue=source == "squeue")
        if last == "abandoned":
            return None
        job_id = last.split(";")[0].strip()
        if not JOB_ID.fullmatch(job_id):
            raise SchedulerError(f"sbatch answered {output!r}, not a job id")
        return job_id

    def submit(self, job: JobSubmission) -> str:
        """Upload the script (and the submission's other files) and `sbatch --parsable` it, once:
        a retry adopts the job it finds (an array's job id, whichever of its tasks it finds)."""
        options = ["-J", job.name, "-o", job.stdout_path, "-e", job.stderr_path, "-D", job.work_dir, *job.sbatch_args]
        since = job.not_before or utcnow() - DEFAULT_LOOKBACK
        files = {posixpath.join(job.work_dir, "job.sbatch"): job.script, **job.files}
        if any("\t" in path or "\n" in path for path in files):
            raise PermanentSchedulerError(f"{job.name}: a file path holds a tab or a newline")
        stdin = (
            "".join(f"{path}\t{base64.b64encode(text.encode()).decode()}\n" for path, text in files.items())
            + END_OF_FILES
            + "\n"
        )
        result = self._submit_program("submit", job.name, job.work_dir, since, *options, script=stdin)
        assert result is not None
        return array_job_id(result.job_id) if isinstance(result, SchedulerJobState) else result

    def abandon(self, name: str, work_dir: str, since: datetime) -> SchedulerJobState | None:
        """Under the name's lock: the job found by name, else fence the name (no later submit runs it)."""
        result = self._submit_program("abandon", name, work_dir, since)
        assert not isinstance(result, str)
        return result

    def find(self, names: Sequence[str], since: datetime) -> dict[str, SchedulerJobState]:
        """The first job of each name submitted since `since`: the orchestrator's, which fences
        its names, so a later one is a copy someone ran by hand. One `squeue --name`, then one
        `sacct --name --starttime` (each per `NAMES_PER_COMMAND` names): squeue's answer for a
        job in the queue, accounting's for one that left it."""
        wanted = [name for name in names if JOB_NAME.fullmatch(name)]
        found: dict[str, SchedulerJobState] = {}
        for command, in_queue in (
            (["squeue", "--me", "--noheader", "--states=all", f"--format={SQUEUE_FORMAT}"], True),
            (
                [
                    "sacct",
                    "--noheader",
                    "-X",
                    "--parsable2",
                    f"--starttime={_sacct_time_argument(since)}",
                    f"--format={SACCT_FORMAT}",
                ],
                False,
            ),
        ):
            for first in range(0, len(wanted), NAMES_PER_COMMAND):
                for line in self._run(
                    [*command, f"--name={','.join(wanted[first : first + NAMES_PER_COMMAND])}"]
                ).splitlines():
                    state = _parse_job_line(line, in_queue)
                    kept = found.get(state.name or "")
                    if state.name in wanted and (kept is None or _first_submitted(state, kept)):
                        found[state.name] = state
        return found

    def states(self, jobs: Mapping[str, str]) -> dict[str, SchedulerJobState]:
        """The state of every job, in one remote command (see `poll`)."""
        return self.poll(jobs, {}, {}).states

    def read_files(self, offsets: Mapping[str, int], limit: int = 65536) -> dict[str, FileTail]:
        """Read every file from its offset in one remote command (see `poll`)."""
        return self.poll({}, offsets, {}, limit).files

    def poll(
        self, jobs: Mapping[str, str], offsets: Mapping[str, int], results: Mapping[str, str], limit: int = 65536
    ) -> JobsSnapshot:
        """States, file tails and the results of ended jobs in one remote command (`POLL_PROGRAM`).

        States: one `squeue` for every job; one `sacct` (bounded by the jobs' names) for those
        that left the controller's queue. A job squeue saw complete or cancelled, but accounting
        does not know yet (slurmdbd lags or is down), takes squeue's answer; another end waits for
        accounting, which has its exit code. Result files are read for every job that may have
        ended (a missing file costs nothing) and kept for those whose answer is an end.

        Example:
            ```python
            slurm.poll({"123": "tacc-6f1c..."}, {paths.progress: 0}, {"123": paths.result}).states["123"].state
            ```
        """
        wanted = {
            job_id: name for job_id, name in jobs.items() if JOB_ID.fullmatch(job_id) and JOB_NAME.fullmatch(name)
        }
        files = {**offsets, **{path: 0 for job_id, path in results.items() if job_id in wanted}}
        if not wanted and not files:
            return JobsSnapshot(states={}, files={})
        stdin = "".join(f"{job_id} {name}\n" for job_id, name in wanted.items()) + "--\n"
        stdin += "".join(f"{path}\0{offset}\0" for path, offset in files.items())
        completed = self.transport.run(
            [
                *SLURM_ENV,
                f"SQUEUE_FORMAT={SQUEUE_FORMAT}",
                f"SETTLED={' '.join(sorted(SETTLED_BY_SQUEUE))}",
                f"ACCOUNTED_FORMAT={ACCOUNTED_FORMAT}",
                "bash",
                "-c",
                POLL_PROGRAM,
                "poll",
                str(limit),
                str(NAMES_PER_COMMAND),
            ],
            stdin=stdin,
        )
        if completed.returncode != 0:
            raise scheduler_error("squeue" if wanted else "read-files", completed)
        sections: dict[str, list[str]] = {"squeue": [], "sacct": [], "file": []}
        for line in completed.stdout.splitlines():
            kind, _, rest = line.partition(" ")
            sections[kind].append(rest)
        tails = {}
        for path, line in zip(files, sections["file"]):
            size, _, encoded = line.partition("\t")
            tails[path] = FileTail(data=base64.b64decode(encoded).decode(errors="replace"), next_offset=int(size))
        states = (
            self._answered(wanted, *sections["squeue"], accounted=sections["sacct"], stderr=completed.stderr)
            if wanted
            else {}
        )
        ended = ended_result_offsets(states, results)
        return JobsSnapshot(
            states=states, files={path: tail for path, tail in tails.items() if path in offsets or path in ended}
        )

    @staticmethod
    def _answered(
        wanted: Mapping[str, str], queue: str, accounted: Sequence[str] = (), stderr: str = ""
    ) -> dict[str, SchedulerJobState]:
        """The jobs' states from the poll's squeue output and, for those it does not settle, its
        `sacct` sections (`<status> <output, base64>`, one per chunk of jobs)."""
        found: dict[str, SchedulerJobState] = {}
        ended_in_queue: dict[str, SchedulerJobState] = {}
        for state in _for_wanted(
            wanted,
            (
                _parse_job_line(line, in_queue=True)
                for line in base64.b64decode(queue).decode(errors="replace").splitlines()
            ),
        ):
            if state.state in SETTLED_BY_SQUEUE:
                found[state.job_id] = state
            elif state.state in ENDS_SQUEUE_TELLS_WHOLE:
                ended_in_queue[state.job_id] = state
        left = [job_id for job_id in wanted if job_id not in found]
        accounted_states = []
        for section in accounted:
            status, _, encoded = section.partition(" ")
            if int(status) != 0:
                error = scheduler_error("sacct", subprocess.CompletedProcess(["sacct"], int(status), "", stderr))
                if not isinstance(error, TransientSchedulerError) or any(
                    job_id not in ended_in_queue for job_id in left
                ):
                    raise error
                continue
            for line in base64.b64decode(encoded).decode(errors="replace").splitlines():
                job_id, state, exit_code, start, end, reason, name = (line.split("|", 6) + [""] * 6)[:7]
                accounted_states.append(
                    SchedulerJobState(
                        job_id=job_id,
                        name=name,
                        state=state,
                        exit_code=exit_code,
                        reason=reason,
                        start=_slurm_time(start),
                        end=_slurm_time(end),
                    )
                )
        for state in _for_wanted({job_id: wanted[job_id] for job_id in left}, accounted_states):
            found[state.job_id] = state
        for job_id, state in ended_in_queue.items():
            found.setdefault(job_id, state)
        return found

    def cancel(self, job_id: str, name: str | None = None) -> None:
        """`scancel` the job (`--name` too, when given: only the job of that name; an array task
        `123_4` alone, its name checked first); a job that has already ended is left alone."""
        if not JOB_ID.fullmatch(job_id):
            raise PermanentSchedulerError(f"{job_id!r} is not a Slurm job id")
        if name is not None and not JOB_NAME.fullmatch(name):
            raise PermanentSchedulerError(f"job name {name!r} is not a safe Slurm job name")
        if name is not None and "_" in job_id:
            completed = self.transport.run([*SLURM_ENV, "bash", "-c", CANCEL_TASK_PROGRAM, "cancel-task", job_id, name])
        else:
            completed = self.transport.run(["scancel", *([f"--name={name}"] if name else []), job_id])
        message = completed.stderr
        if completed.returncode != 0 and not re.search(r"already completing or completed|Invalid job id", message):
            raise scheduler_error("scancel", completed)

    def cancel_member(self, work_dir: str) -> None:
        """Stop one member of a packed allocation: create its cancel marker (the allocation's
        launcher stops that member alone)."""
        self._run(["bash", "-c", CANCEL_MEMBER_PROGRAM, "cancel-member", work_dir, CANCEL_FILE], label="cancel-member")

    def accounting(self, start: datetime, end: datetime) -> Iterator[list[str]]:
        """`sacct --parsable2 --duplicates` for the window (every attempt, jobs and their steps), streamed.

        `TZ=UTC` makes sacct read the window and print its times in UTC whatever the login
        node's zone; `SLURM_TIME_FORMAT=standard` overrides a login profile's `relative` times.
        No `--state`: with one, the window would select jobs in that state during it instead.
        """
        from tacc_jobs.schedulers.base import sacct_rows

        window = [
            f"--starttime={start.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}",
            f"--endtime={end.astimezone(timezone.utc):%Y-%m-%dT%H:%M:%S}",
        ]
        argv = [
            *SLURM_ENV,
            "sacct",
            "--noheader",
            "--parsable2",
            "--duplicates",
            *window,
            f"--format={','.join(SACCT_FIELDS)}",
        ]
        try:
            yield from sacct_rows(self.transport.stream(argv))
        except subprocess.CalledProcessError as error:
            raise scheduler_error(
                "sacct", subprocess.CompletedProcess(argv, error.returncode, "", error.stderr)
            ) from None

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
            resources.append(
                QueueResources(
                    queue=queue,
                    nodes_total=total,
                    nodes_allocated=allocated,
                    nodes_idle=idle,
                    gpus_idle=idle * specs[queue].gpus_per_node,
                )
            )
        return resources
