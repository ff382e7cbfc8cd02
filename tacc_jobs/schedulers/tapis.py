"""The scheduler interface on TACC's API gateway: the Tapis v3 Jobs API (and Files API reads).

Tapis stages the job, writes and submits its batch script with the user's allocation, watches
it in Slurm and reports a status of its own; no SSH login, no MFA. The job's name and its tags
carry the idempotency key (`tacc-<job uuid>`): a submission searches for it first and adopts
the job it finds, as the Slurm backend does. The states of every active job come from one
search call. Files the tracker reads (progress, log, result) come from the Files API, except
those of jobs that have not started yet: they cannot exist, and are not asked for.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone

from tacc_jobs.exceptions import PermanentSchedulerError, TapisUnavailableError
from tacc_jobs.schedulers.base import (
    FileTail,
    JobsSnapshot,
    JobSubmission,
    QueueResources,
    SchedulerJobState,
)
from tacc_jobs.schedulers.slurm import JOB_NAME
from tacc_jobs.schedulers.states import (
    TAPIS_WAITING_STATUSES,
    map_tapis_status,
    poll_in_parts,
)
from tacc_jobs.tapis.apps import APP_VERSION, app_id
from tacc_jobs.tapis.client import TapisClient
from tacc_jobs.tapis.models import (
    DeliveryTarget,
    FileInfo,
    JobArgSpec,
    JobFileInput,
    JobHistoryEvent,
    JobParameterSet,
    JobSubmitRequest,
    JobSubscription,
    KeyValuePair,
    LogConfig,
    TapisJob,
)
from tacc_jobs.walltime import format_walltime, parse_walltime

TAPIS_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-\d{3}")
ORCHESTRATOR_TAG = "tacc-orchestrator"
SUBSCRIPTION_TTL_MINUTES = 60 * 24 * 14
# Tapis sets these from the job itself (name, queue, nodes, time, output files, directory).
_TAPIS_OWNED_OPTIONS = {"-J", "-o", "-e", "-D", "-p", "-N", "-t"}


def _search_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _sacct_time(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S") if moment else "Unknown"


def _exit_code(job: TapisJob) -> str | None:
    """Slurm's `code:signal` of the job's remote outcome, when Tapis reported one."""
    info = (job.remote_result_info or "").strip()
    return info if re.fullmatch(r"\d+:\d+", info) else None


def _sacct_state(job: TapisJob, state: SchedulerJobState) -> str:
    """The job's state in sacct's words, for accounting rows."""
    if job.status == "FINISHED":
        return "COMPLETED"
    if job.status == "CANCELLED":
        return "CANCELLED"
    if job.status == "FAILED":
        return state.reason if state.reason in {"TIMEOUT", "OUT_OF_MEMORY", "DEADLINE"} else "FAILED"
    return "RUNNING" if job.remote_started else "PENDING"


def submit_request(job: JobSubmission, exec_system_id: str, allocation: str | None) -> JobSubmitRequest:
    """The Jobs API request of a submission: the agent's app on the execution system, the
    planned queue, nodes and wall time, the other sbatch options as scheduler options, the
    environment, file inputs and a webhook subscription; output and archive stay in the job's
    directory.

    Raises:
        PermanentSchedulerError: The submission has no agent, or its logs are outside its directory.

    Example:
        >>> job = JobSubmission(name="tacc-1", script="", work_dir="/s/j", stdout_path="/s/j/stdout.log",
        ...                     stderr_path="/s/j/stderr.log", agent="AlphaCal",
        ...                     sbatch_args=["-p", "gpu-a100", "-N", "2", "--ntasks-per-node", "1", "-t", "01:30:00"])
        >>> request = submit_request(job, "ls6", "AST123")
        >>> request.exec_system_logical_queue, request.node_count, request.max_minutes
        ('gpu-a100', 2, 90)
        >>> [option.arg for option in request.parameter_set.scheduler_options]
        ['--ntasks-per-node 1', '-A AST123']
    """
    if job.agent is None:
        raise PermanentSchedulerError(f"job {job.name}: Tapis runs an agent's app; the submission names no agent")
    if {posixpath.dirname(job.stdout_path), posixpath.dirname(job.stderr_path)} != {job.work_dir}:
        raise PermanentSchedulerError(
            f"job {job.name}: its stdout and stderr must be files of its directory {job.work_dir}"
        )
    planned = dict(zip(job.sbatch_args[::2], job.sbatch_args[1::2]))
    options = [JobArgSpec(arg=f"{flag} {value}") for flag, value in planned.items() if flag not in _TAPIS_OWNED_OPTIONS]
    if allocation and "-A" not in planned:
        options.append(JobArgSpec(arg=f"-A {allocation}"))
    subscriptions = (
        [
            JobSubscription(
                description=f"status of {job.name}",
                ttlminutes=SUBSCRIPTION_TTL_MINUTES,
                delivery_targets=[DeliveryTarget(delivery_address=job.webhook_url)],
            )
        ]
        if job.webhook_url
        else []
    )
    return JobSubmitRequest(
        name=job.name,
        app_id=app_id(job.agent),
        app_version=APP_VERSION,
        description=f"{job.agent} by tacc-orchestrator",
        exec_system_id=exec_system_id,
        exec_system_exec_dir=job.work_dir,
        exec_system_input_dir=posixpath.join(job.work_dir, "inputs"),
        exec_system_output_dir=job.work_dir,
        exec_system_logical_queue=planned.get("-p"),
        archive_system_id=exec_system_id,
        archive_system_dir=job.work_dir,
        node_count=int(planned["-N"]) if "-N" in planned else None,
        max_minutes=math.ceil(parse_walltime(planned["-t"]).total_seconds() / 60) if "-t" in planned else None,
        file_inputs=[JobFileInput(name=name, source_url=url, target_path=name) for name, url in job.inputs.items()],
        parameter_set=JobParameterSet(
            scheduler_options=options,
            env_variables=[KeyValuePair(key=key, value=value) for key, value in job.env.items()],
            log_config=LogConfig(
                stdout_filename=posixpath.basename(job.stdout_path), stderr_filename=posixpath.basename(job.stderr_path)
            ),
        ),
        tags=[job.name, ORCHESTRATOR_TAG],
        subscriptions=subscriptions,
    )


def job_state(job: TapisJob) -> SchedulerJobState:
    """A Tapis job as the scheduler interface reports it: its Tapis status, mapped.

    Example:
        >>> state = job_state(TapisJob(uuid="u", name="n", status="QUEUED"))
        >>> state.status, state.reason
        (<JobStatus.QUEUING: 'QUEUING'>, 'QUEUED')
    """
    exit_code = _exit_code(job)
    status, reason = map_tapis_status(
        job.status, job.condition, job.last_message, job.remote_started is not None, exit_code
    )
    return SchedulerJobState(
        job_id=job.uuid,
        name=job.name,
        state=job.status,
        status=status,
        reason=reason,
        exit_code=exit_code,
        start=job.remote_started,
        submit=job.created,
        end=(job.remote_ended or job.ended) if status is not None and status.is_terminal else None,
    )


class TapisScheduler:
    """The scheduler interface on a Tapis tenant's Jobs API, for one execution system.

    Example:
        ```python
        with TapisCredentials.load("ls6").get_client() as tapis:
            scheduler = TapisScheduler(tapis, system="ls6", exec_system_id="ls6", scratch_root="/scratch/01234/jdoe/tacc")
            scheduler.states({"8a1c...-007": "tacc-6f1c..."})
        ```
    """

    def __init__(
        self, client: TapisClient, system: str, exec_system_id: str, scratch_root: str, allocation: str | None = None
    ) -> None:
        self.client, self.system, self.exec_system_id = client, system, exec_system_id
        self.scratch_root, self.allocation = scratch_root, allocation
        self._not_started: set[str] = set()  # directories of jobs the last states() saw waiting

    def _search_by_name(self, names: Sequence[str]) -> dict[str, TapisJob]:
        """The newest job of each name (the idempotency key), in one search call."""
        for name in names:
            if not JOB_NAME.fullmatch(name):
                raise PermanentSchedulerError(f"job name {name!r} is not a safe job name")
        if not names:
            return {}
        newest: dict[str, TapisJob] = {}
        for job in self.client.search_jobs([f"(name IN ({', '.join(repr(name) for name in names)}))"]):
            newest[job.name] = job  # ordered by creation: the last is the newest
        return newest

    def find(self, names: Sequence[str], since: datetime) -> dict[str, SchedulerJobState]:
        """The job of each name, from one search call (Tapis names are not reused by other jobs).

        Example:
            ```python
            scheduler.find(["tacc-6f1c2d9e00000000000000000000000a"], since)  # {name: SchedulerJobState}
            ```
        """
        return {name: job_state(job) for name, job in self._search_by_name(names).items()}

    def abandon(self, name: str, work_dir: str, since: datetime) -> SchedulerJobState | None:
        """The job of this name, if Tapis has one. Tapis offers no lock to fence a name with: a
        submitter still at work could submit after this answer (it then finds its record ended
        and cancels its job, so none runs untracked for long).

        Example:
            ```python
            scheduler.abandon("tacc-6f1c...", "/scratch/01234/jdoe/tacc/jobs/6f1c...", since)  # None
            ```
        """
        return self.find([name], since).get(name)

    def submit(self, job: JobSubmission) -> str:
        """Submit the agent's app once: a job already submitted under this name is adopted, and
        after an answer lost to a 5xx or a dropped connection the search runs again first.

        Raises:
            TapisRequestError: Tapis refused the job (an unknown app, queue or system), with its message.
            TapisUnavailableError: Tapis could not be reached, or kept failing, through the retries.

        Example:
            ```python
            scheduler.submit(batch_job.submission)  # "8a1c...-007"
            ```
        """
        if job.files:
            raise PermanentSchedulerError(
                f"{job.name}: packed allocations do not run through Tapis; submit one job per request"
            )
        request = submit_request(job, self.exec_system_id, self.allocation)
        attempt = -1
        while True:
            attempt += 1
            existing = self._search_by_name([job.name]).get(job.name)
            if existing is not None:
                return existing.uuid
            try:
                return self.client.submit_job(request).uuid
            except TapisUnavailableError:
                if attempt == self.client.retries:
                    raise
                time.sleep(self.client.backoff(attempt))

    def states(self, jobs: Mapping[str, str]) -> dict[str, SchedulerJobState]:
        """The state of every job (uuid -> name) from one search call (per 500 jobs).

        Example:
            ```python
            scheduler.states({"8a1c...-007": "tacc-6f1c..."})["8a1c...-007"].status  # JobStatus.RUNNING
            ```
        """
        wanted = [job_id for job_id in jobs if TAPIS_UUID.fullmatch(job_id)]
        if not wanted:
            return {}
        found = [
            job
            for job in self.client.search_jobs([f"(uuid IN ({', '.join(repr(job_id) for job_id in wanted)}))"])
            if jobs[job.uuid] == job.name
        ]
        self._not_started = {
            job.exec_system_exec_dir
            for job in found
            if job.exec_system_exec_dir and job.status in TAPIS_WAITING_STATUSES
        }
        return {job.uuid: job_state(job) for job in found}

    def poll(
        self, jobs: Mapping[str, str], offsets: Mapping[str, int], results: Mapping[str, str], limit: int = 65536
    ) -> JobsSnapshot:
        """One search call for the states, then the files of started jobs, one Files API call per
        file (the API reads one file at a time): a sweep of waiting jobs costs the search alone.

        Example:
            ```python
            scheduler.poll({"8a1c...-007": "tacc-6f1c..."}, {paths.progress: 0}, {"8a1c...-007": paths.result}).files
            ```
        """
        return poll_in_parts(self, jobs, offsets, results, limit)

    def cancel_member(self, work_dir: str) -> None:
        """Packed allocations do not run through Tapis, so there is no member to stop.

        Raises:
            PermanentSchedulerError: Always.
        """
        raise PermanentSchedulerError(f"{work_dir}: packed allocations do not run through Tapis; cancel the job itself")

    def cancel(self, job_id: str, name: str | None = None) -> None:
        """Cancel the job (Tapis uuids are never reused, so `name` changes nothing); a job that
        has already ended is left alone.

        Example:
            ```python
            scheduler.cancel("8a1c...-007")
            ```
        """
        if not TAPIS_UUID.fullmatch(job_id):
            raise PermanentSchedulerError(f"{job_id!r} is not a Tapis job id")
        self.client.cancel_job(job_id)

    def accounting(self, start: datetime, end: datetime) -> Iterator[list[str]]:
        """Accounting rows (`SACCT_FIELDS`) of this system's jobs created before `end` and still
        active or updated since `start`, from Tapis's job records: one search call per 500 jobs.
        Jobs that never reached Slurm have no row.

        Example:
            ```python
            rows = list(scheduler.accounting(datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 11, 2, tzinfo=timezone.utc)))
            ```
        """
        conditions = [
            f"(execSystemId = '{self.exec_system_id}')",
            "AND",
            f"(created < '{_search_time(end)}')",
            "AND",
            f"(lastUpdated >= '{_search_time(start)}')",
        ]
        for job in self.client.search_jobs(conditions):
            if not job.remote_job_id:
                continue
            state = job_state(job)
            elapsed = (state.end or datetime.now(timezone.utc)) - job.remote_started if job.remote_started else None
            options = json.loads(job.parameter_set or "{}").get("schedulerOptions") or []
            account = next(
                (option["arg"].split()[1] for option in options if option.get("arg", "").startswith("-A ")), ""
            )
            submitted = _sacct_time(
                job.remote_submitted or job.created
            )  # Tapis reports no eligible time: the submission's
            yield [
                job.remote_job_id,
                job.owner or "",
                account,
                job.exec_system_logical_queue or "",
                _sacct_state(job, state),
                state.exit_code or "0:0",
                submitted,
                submitted,
                _sacct_time(job.remote_started),
                _sacct_time(state.end),
                format_walltime(elapsed) if elapsed else "00:00:00",
                "",
                str(job.node_count or 1),
                "",
                "",
                "",
                job.name,
            ]

    def resources(self) -> list[QueueResources]:
        """Not available: Tapis reports a system's queues and their limits, not how busy they are.

        Example:
            ```python
            scheduler.resources()  # raises PermanentSchedulerError
            ```
        """
        raise PermanentSchedulerError(
            f"{self.system} is reached through Tapis, which does not report queue load; "
            "save a TaccCredentials block to query it over SSH"
        )

    def read_files(self, offsets: Mapping[str, int], limit: int = 65536) -> dict[str, FileTail]:
        """Each file from its offset (at most `limit` bytes, the newest kept), one Files API call
        per file; files of jobs that have not started are not asked for.

        Example:
            ```python
            scheduler.read_files({paths.progress: 0, paths.stdout: offset})
            ```
        """
        tails = {}
        for path, offset in offsets.items():
            waiting = any(path.startswith(f"{directory.rstrip('/')}/") for directory in self._not_started)
            content = None if waiting else self.client.get_contents(self.exec_system_id, path)
            if content is None:
                tails[path] = FileTail(data="", next_offset=offset)
                continue
            begin = min(max(offset, len(content) - limit, 0), len(content))
            tails[path] = FileTail(data=content[begin:].decode(errors="replace"), next_offset=len(content))
        return tails

    def outputs(self, job_id: str) -> list[FileInfo]:
        """The files the job's agent wrote (its `output/` directory), while it runs or after.

        Example:
            ```python
            [file.name for file in scheduler.outputs("8a1c...-007")]  # ["progress", "result.json"]
            ```
        """
        return self.client.job_outputs(job_id, "output/")

    def output(self, job_id: str, path: str) -> bytes:
        """One output file of the job (e.g. `output/result.json`, or its log `stdout.log`).

        Example:
            ```python
            json.loads(scheduler.output("8a1c...-007", "output/result.json"))
            ```
        """
        return self.client.job_output(job_id, path)

    def history(self, job_id: str) -> list[JobHistoryEvent]:
        """Every status change and event of the job, as Tapis recorded them.

        Example:
            ```python
            [event.event_detail for event in scheduler.history("8a1c...-007")]
            ```
        """
        return self.client.job_history(job_id)
