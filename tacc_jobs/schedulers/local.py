"""The embedded cluster: job scripts run as detached local processes with Slurm's semantics.

State lives on disk under one directory, so jobs outlive the orchestrator process:

    <root>/jobs/<id>/job.json     what was submitted (partition, nodes, time limit, paths)
    <root>/jobs/<id>/state.json   PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED | TIMEOUT
    <root>/names/<digest>         the newest job id of each job name (the look-up by name)
    <root>/running/<id>           the nodes each running job holds
    <root>/scratch/               the cluster's scratch file system

The two indexes keep submission and scheduling independent of how many jobs the cluster has
seen; a cluster directory written before them is indexed once, on first use.

A supervisor process per job (`tacc_jobs.schedulers.local_supervisor`) waits for free nodes,
runs the script, enforces the wall time and records the exit code.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tacc_jobs.exceptions import PermanentSchedulerError
from tacc_jobs.launcher import CANCEL_FILE
from tacc_jobs.planning.catalog import system_queues
from tacc_jobs.processes import process_alive
from tacc_jobs.schedulers.arrays import (
    ARRAY_OPTION,
    array_job_id,
    array_task_id,
    parse_array_spec,
)
from tacc_jobs.schedulers.base import (
    FileTail,
    JobsSnapshot,
    JobSubmission,
    QueueResources,
    SchedulerJobState,
)
from tacc_jobs.schedulers.states import poll_in_parts
from tacc_jobs.walltime import format_walltime, parse_walltime, utcnow

ABANDONED = ".abandoned"
"""In a job directory: watch-jobs ended the record before the job was submitted; never submit it."""
TERMINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}
_SUPPORTED_OPTIONS = {"-p", "-N", "-t", "-A", "-J", "--ntasks-per-node", "-n", ARRAY_OPTION}
JOB_ID = re.compile(r"\d+(?:_\d+)?")
ARRAY_TASK_LIMIT_REASON = "JobArrayTaskLimit"
"""Slurm's pending reason of an array task held back by the array's throttle (`%K`)."""
HOLD_FLAGS = {"-H", "--hold"}
"""sbatch's valueless flags that submit a job held: PENDING (JobHeldUser) until `release`."""
HELD_REASON = "JobHeldUser"


class LocalJob(BaseModel):
    """What was submitted to the embedded cluster."""

    job_id: str
    name: str
    user: str
    account: str | None
    partition: str
    nodes: int
    time_limit_seconds: float
    work_dir: str
    script_path: str
    stdout_path: str
    stderr_path: str
    submit: datetime
    array_job_id: str | None = None
    array_task_id: int | None = None
    array_tasks: list[int] = []
    array_throttle: int | None = None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(data, default=str))
    os.replace(partial, path)


def parse_sbatch_args(arguments: Sequence[str]) -> dict[str, str]:
    """Read the planned sbatch options, refusing what TACC's sbatch refuses. A hold flag
    (`-H`, `--hold`) takes no value and reads as `{"--hold": ""}`.

    Raises:
        PermanentSchedulerError: For `--gres`, `--mem` or an option the embedded cluster lacks.

    Example:
        >>> parse_sbatch_args(["-p", "local-gpu", "--hold", "-N", "2"])
        {'-p': 'local-gpu', '-N': '2', '--hold': ''}
    """
    held = any(flag in HOLD_FLAGS for flag in arguments)
    arguments = [argument for argument in arguments if argument not in HOLD_FLAGS]
    if len(arguments) % 2:
        raise PermanentSchedulerError(f"sbatch: options come in flag/value pairs, got {list(arguments)}")
    options = dict(zip(arguments[::2], arguments[1::2]))
    for flag in options:
        if flag.startswith(("--gres", "--gpus", "--mem")):
            raise PermanentSchedulerError(
                f"sbatch: error: {flag} is not supported at TACC; request whole nodes with -N"
            )
        if flag not in _SUPPORTED_OPTIONS:
            raise PermanentSchedulerError(f"sbatch: error: unrecognized option {flag!r}")
    return {**options, "--hold": ""} if held else options


class LocalScheduler:
    """The embedded default cluster (`system="local"`), one machine, Slurm's behaviour.

    Example:
        ```python
        cluster = LocalScheduler(Path("~/.tacc-orchestrator/local-cluster").expanduser())
        job_id = cluster.submit(submission)
        cluster.states({job_id: submission.name})[job_id].state  # 'PENDING', then 'RUNNING', ...
        ```
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs_dir = root / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        (root / "scratch").mkdir(exist_ok=True)
        self.scratch_root = str(root / "scratch")
        self.queues = {spec.queue: spec for spec in system_queues("local")}
        self.total_nodes = max(spec.max_nodes for spec in self.queues.values())

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cluster-wide lock (the embedded slurmctld's)."""
        with (self.root / "cluster.lock").open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def job_dir(self, job_id: str) -> Path:
        """The directory holding one job's submission and state."""
        return self.jobs_dir / job_id

    def load_job(self, job_id: str) -> LocalJob:
        """What was submitted as `job_id`."""
        return LocalJob.model_validate_json((self.job_dir(job_id) / "job.json").read_text())

    def read_state(self, job_id: str) -> dict[str, Any]:
        """The job's state record."""
        return json.loads((self.job_dir(job_id) / "state.json").read_text())

    def write_state(self, job_id: str, state: dict[str, Any]) -> None:
        """Replace the job's state record atomically (hold `locked()`)."""
        _write_json(self.job_dir(job_id) / "state.json", state)

    def _job_ids(self) -> list[str]:
        return sorted(
            (p.name for p in self.jobs_dir.iterdir() if (p / "state.json").exists()),
            key=lambda job_id: [int(part) for part in job_id.split("_")],
        )

    def _indexed(self, name: str) -> Path:
        """The index directory `name` (hold `locked()`), built from every job when missing."""
        index = self.root / name
        if not index.is_dir():
            partial = self.root / f"{name}.partial"
            partial.mkdir(exist_ok=True)
            for job_id in self._job_ids():
                if name == "names":
                    (partial / _name_key(self.load_job(job_id).name)).write_text(job_id)
                elif self.read_state(job_id)["state"] == "RUNNING":
                    (partial / job_id).write_text(str(self.load_job(job_id).nodes))
            os.replace(partial, index)
        return index

    def set_running(self, job_id: str, nodes: int | None) -> None:
        """Note that the job holds `nodes` nodes, or (None) none any more (hold `locked()`)."""
        marker = self._indexed("running") / job_id
        if nodes is None:
            marker.unlink(missing_ok=True)
        else:
            marker.write_text(str(nodes))

    def array_task_may_start(self, job: LocalJob) -> bool:
        """Whether an array task may take nodes as far as its array goes (hold `locked()`): fewer
        than the throttle of its other tasks run, and no task before it still waits (Slurm
        starts an array's tasks in index order)."""
        running = self._indexed("running")
        siblings = [
            array_task_id(job.array_job_id or "", index) for index in job.array_tasks if index != job.array_task_id
        ]
        if job.array_throttle is not None and sum((running / task).exists() for task in siblings) >= job.array_throttle:
            return False
        earlier = siblings[: job.array_tasks.index(job.array_task_id)] if job.array_task_id in job.array_tasks else []
        return not any(
            self.read_state(task)["state"] == "PENDING" and self.read_state(task).get("reason") != HELD_REASON
            for task in earlier
        )

    def submit(self, job: JobSubmission) -> str:
        """Write the script, record the job PENDING and start its supervisor; with `--array
        <indexes>%K`, one job `<id>_<i>` per index, each with its supervisor, at most K running
        at once (Slurm's semantics); the array's id is returned."""
        options = parse_sbatch_args(job.sbatch_args)
        partition = options.get("-p", next(iter(self.queues)))
        spec = self.queues.get(partition)
        if spec is None:
            raise PermanentSchedulerError(f"sbatch: error: invalid partition specified: {partition}")
        nodes = int(options.get("-N", "1"))
        if nodes > spec.max_nodes:
            raise PermanentSchedulerError(
                f"sbatch: error: job violates accounting/QOS policy: {nodes} nodes > {spec.max_nodes} in {partition}"
            )
        time_limit = parse_walltime(options.get("-t", f"{spec.max_wall_hours:g}h"))
        work_dir = Path(job.work_dir)
        work_dir.mkdir(parents=True, exist_ok=True)
        script_path = work_dir / "job.sbatch"
        try:
            indexes, throttle = parse_array_spec(options[ARRAY_OPTION]) if ARRAY_OPTION in options else ([], None)
        except ValueError as error:
            raise PermanentSchedulerError(f"sbatch: error: {error}") from None
        with self.locked():  # exactly once: a job of this name is adopted, an abandoned name refused
            if (found := self._find_locked([job.name])).get(job.name):
                return array_job_id(found[job.name].job_id)
            if (work_dir / ABANDONED).exists():
                raise PermanentSchedulerError(
                    f"sbatch: {job.name} was abandoned by watch-jobs (its record ended before the job was submitted)"
                )
            script_path.write_text(job.script)
            for path, text in job.files.items():
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                Path(path).write_text(text)
            counter = self.root / "next_job_id"
            job_id = counter.read_text().strip() if counter.exists() else "1"
            counter.write_text(str(int(job_id) + 1))
            submitted = utcnow()
            tasks = [array_task_id(job_id, index) for index in indexes] or [job_id]
            for task, index in zip(tasks, indexes or [None]):
                self.job_dir(task).mkdir()
                record = LocalJob(
                    job_id=task,
                    name=options.get("-J", job.name),
                    user=os.environ.get("USER", str(os.getuid())),
                    account=options.get("-A"),
                    partition=partition,
                    nodes=nodes,
                    time_limit_seconds=time_limit.total_seconds(),
                    work_dir=str(work_dir),
                    script_path=str(script_path),
                    stdout_path=_array_path(job.stdout_path, job_id, index),
                    stderr_path=_array_path(job.stderr_path, job_id, index),
                    submit=submitted,
                    **(
                        {
                            "array_job_id": job_id,
                            "array_task_id": index,
                            "array_tasks": indexes,
                            "array_throttle": throttle,
                        }
                        if index is not None
                        else {}
                    ),
                )
                _write_json(self.job_dir(task) / "job.json", record.model_dump(mode="json"))
                self.write_state(task, {"state": "PENDING", "reason": HELD_REASON if "--hold" in options else "None"})
            (self._indexed("names") / _name_key(options.get("-J", job.name))).write_text(tasks[0])
        if "--hold" not in options:
            for task in tasks:
                self._start_supervisor(task)
        return job_id

    def release(self, job_id: str) -> None:
        """Let a held job run (`scontrol release`): it waits for nodes like any other; a job
        not held is left alone."""
        with self.locked():
            state = self.read_state(job_id)
            if state["state"] != "PENDING" or state.get("reason") != HELD_REASON:
                return
            self.write_state(job_id, {**state, "reason": "None"})
        self._start_supervisor(job_id)

    def _start_supervisor(self, job_id: str) -> None:
        with self.locked():
            self._spawn_supervisor(job_id)

    def _spawn_supervisor(self, job_id: str) -> None:
        """Start the job's supervisor and record its pid; the caller holds the cluster's lock."""
        with (self.job_dir(job_id) / "supervisor.log").open("a") as supervisor_log:
            supervisor = subprocess.Popen(
                [sys.executable, "-m", "tacc_jobs.schedulers.local_supervisor", str(self.root), job_id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=supervisor_log,
                start_new_session=True,
                close_fds=True,
            )
        state = self.read_state(job_id)
        state["supervisor_pid"] = supervisor.pid
        self.write_state(job_id, state)

    def _state(self, job_id: str, name: str) -> SchedulerJobState:
        state = self.read_state(job_id)
        if (
            state.get("supervisor_pid")
            and state["state"] in ("PENDING", "RUNNING")
            and not process_alive(state["supervisor_pid"])
        ):
            with self.locked():
                state = self.read_state(job_id)  # it may have recorded the end, or been revived, meanwhile
                if state["state"] == "PENDING" and not process_alive(state["supervisor_pid"]):
                    self._spawn_supervisor(job_id)  # as slurmctld keeps a pending job: it waits for nodes again
                    state = self.read_state(job_id)
            if state["state"] == "RUNNING" and not process_alive(state["supervisor_pid"]):
                state = {**state, "state": "NODE_FAIL", "reason": "supervisor lost"}
        return SchedulerJobState(
            job_id=job_id,
            name=name,
            state=state["state"],
            reason=state.get("reason"),
            exit_code=state.get("exit_code"),
            start=state.get("start"),
            end=state.get("end"),
        )

    def states(self, jobs: Mapping[str, str]) -> dict[str, SchedulerJobState]:
        """Every listed job's state (id -> name; another name under the id is not that job), read from disk."""
        found = {}
        for job_id, name in jobs.items():
            if (
                JOB_ID.fullmatch(job_id)
                and (self.job_dir(job_id) / "state.json").exists()
                and self.load_job(job_id).name == name
            ):
                found[job_id] = self._state(job_id, name)
        return found

    def poll(
        self, jobs: Mapping[str, str], offsets: Mapping[str, int], results: Mapping[str, str], limit: int = 65536
    ) -> JobsSnapshot:
        """States, file tails, and the result files of ended jobs, read from disk."""
        return poll_in_parts(self, jobs, offsets, results, limit)

    def _find_locked(self, names: Sequence[str]) -> dict[str, SchedulerJobState]:
        index, found = self._indexed("names"), {}
        for name in names:
            entry = index / _name_key(name)
            job_id = entry.read_text() if entry.exists() else None
            if job_id is not None and self.load_job(job_id).name == name:
                found[name] = self._state(job_id, name)
        return found

    def find(self, names: Sequence[str], since: datetime) -> dict[str, SchedulerJobState]:
        """The job of each name (the embedded cluster keeps every job, so `since` needs no bound)."""
        with self.locked():
            return self._find_locked(names)

    def abandon(self, name: str, work_dir: str, since: datetime) -> SchedulerJobState | None:
        """Under the cluster lock: the job of this name, else fence the name against any later submit."""
        with self.locked():
            if found := self._find_locked([name]).get(name):
                return found
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            (Path(work_dir) / ABANDONED).touch()
            return None

    def cancel(self, job_id: str, name: str | None = None) -> None:
        """Cancel a pending or running job (SIGTERM to its process group); ended or already
        cancelled jobs, and with `name` a job of another name, are left alone."""
        with self.locked():
            if name is not None and self.load_job(job_id).name != name:
                return
            state = self.read_state(job_id)
            if state["state"] in TERMINAL_STATES or state["state"].startswith("CANCELLED"):
                return
            pgid = state.get("pgid")
            state.update(state=f"CANCELLED by {os.getuid()}", end=utcnow().isoformat(), reason="None")
            state.setdefault("exit_code", "0:15")
            self.write_state(job_id, state)
            self.set_running(job_id, None)
        if pgid:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def cancel_member(self, work_dir: str) -> None:
        """Stop one member of a packed allocation: create its cancel marker (the allocation's
        launcher stops that member alone)."""
        Path(work_dir).mkdir(parents=True, exist_ok=True)
        (Path(work_dir) / CANCEL_FILE).touch()

    def accounting(self, start: datetime, end: datetime) -> Iterator[list[str]]:
        """Jobs eligible before `end` that had not ended before `start` (sacct's window without
        `--state`), as sacct prints them; a local job is eligible when submitted and has no steps."""
        for job_id in self._job_ids():
            job, state = self.load_job(job_id), self.read_state(job_id)
            started, ended = _parse_time(state.get("start")), _parse_time(state.get("end"))
            if not (job.submit < end and (ended is None or ended >= start)):
                continue
            elapsed = int(((ended or utcnow()) - started).total_seconds()) if started else 0
            gpus = job.nodes * self.queues[job.partition].gpus_per_node
            yield [
                job_id,
                job.user,
                job.account or "",
                job.partition,
                state["state"],
                state.get("exit_code") or "0:0",
                _sacct_time(job.submit),
                _sacct_time(job.submit),
                _sacct_time(started),
                _sacct_time(ended),
                format_walltime(timedelta(seconds=elapsed)),
                format_walltime(timedelta(seconds=job.time_limit_seconds)),
                str(job.nodes),
                f"billing={job.nodes},node={job.nodes},gres/gpu={gpus}",
                "",
                "",
                job.name,
            ]

    def allocated_nodes(self) -> int:
        """Nodes held by running jobs (hold `locked()` for a consistent answer)."""
        return sum(int(marker.read_text()) for marker in self._indexed("running").iterdir())

    def resources(self) -> list[QueueResources]:
        """Nodes and GPUs of the one simulated node pool, seen through each local queue."""
        with self.locked():
            allocated = self.allocated_nodes()
        idle = self.total_nodes - allocated
        return [
            QueueResources(
                queue=spec.queue,
                nodes_total=self.total_nodes,
                nodes_allocated=allocated,
                nodes_idle=idle,
                gpus_idle=idle * spec.gpus_per_node,
            )
            for spec in self.queues.values()
        ]

    def read_files(self, offsets: Mapping[str, int], limit: int = 65536) -> dict[str, FileTail]:
        """Read each file from its offset; a missing file reads as empty."""
        tails = {}
        for path, offset in offsets.items():
            try:
                with open(path, "rb") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    handle.seek(max(offset, size - limit))
                    data = handle.read()
            except FileNotFoundError:
                data, size = b"", offset
            tails[path] = FileTail(data=data.decode(errors="replace"), next_offset=size)
        return tails


def _array_path(path: str, array_job: str, index: int | None) -> str:
    """An array task's log path: Slurm's `%A` (the array's id) and `%a` (the task's index) filled in."""
    return path if index is None else path.replace("%A", array_job).replace("%a", str(index))


def _name_key(name: str) -> str:
    """A job name as a file name (names are free text)."""
    return hashlib.sha256(name.encode()).hexdigest()


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _sacct_time(value: datetime | None) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if value else "Unknown"
