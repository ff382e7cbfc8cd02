"""Following jobs: observe many in one scheduler call, decide what each observation means (the
one tracking policy, used by a run waiting on its job and by the watch-jobs sweep alike), record
what changed, pace the polling."""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, Field

from tacc_jobs.exceptions import IllegalTransition, LoginRequired, SchedulerError
from tacc_jobs.launcher import STATUS_FILE, MemberStatus
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.planning.catalog import find_queue
from tacc_jobs.planning.charges import charge_su, split_charge
from tacc_jobs.schedulers import Scheduler, SchedulerJobState
from tacc_jobs.schedulers.arrays import array_job_id, array_task_id
from tacc_jobs.schedulers.job_script import JobPaths, record_job_name, submission_dir
from tacc_jobs.schedulers.states import map_scheduler_state, map_slurm_state
from tacc_jobs.settings import OrchestratorSettings
from tacc_jobs.store import JobStore, JobUpdate, Transition
from tacc_jobs.walltime import utcnow

NAME_LOOKUP_MARGIN = timedelta(hours=1)
"""Look-ups by name start this long before the record was created (clocks of hosts differ)."""


class TrackedJob(BaseModel):
    """One submitted job as the tracker follows it."""

    scheduler_job_id: str
    name: str = Field(description="The job name (idempotency key): with the id, the job's identity")
    progress_path: str
    stdout_path: str | None = None
    stdout_offset: int = 0
    result_path: str | None = Field(default=None, description="The agent's result file, read in the same poll")
    status_path: str | None = Field(default=None, description="A packed member's status.json (its launcher writes it)")

    @classmethod
    def from_record(cls, record: JobRecord) -> TrackedJob:
        """Follow a stored job (its progress and result; no log tail); a packed member by its
        allocation's id and name, and its own status file."""
        if record.scheduler_job_id is None or record.work_dir is None:
            raise ValueError(f"job {record.id} has not been submitted")
        paths = JobPaths.for_work_dir(record.work_dir)
        return cls(
            scheduler_job_id=record.scheduler_job_id,
            name=record_job_name(record),
            progress_path=paths.progress,
            result_path=paths.result,
            status_path=member_status_path(record.work_dir) if record.packed else None,
        )


def member_status_path(work_dir: str) -> str:
    """A packed member's status file in its work directory.

    Example:
        >>> member_status_path("/s/jobs/1")
        '/s/jobs/1/output/status.json'
    """
    return posixpath.join(work_dir, STATUS_FILE)


class JobObservation(BaseModel):
    """What one poll saw of one job."""

    scheduler_job_id: str
    state: SchedulerJobState | None = None
    status: JobStatus | None = None
    reason: str | None = None
    progress: float | None = None
    log: str = ""
    next_stdout_offset: int = 0
    result: dict[str, object] | None = Field(default=None, description="The agent's result, once the job has ended")
    allocation: SchedulerJobState | None = Field(
        default=None, description="A packed member's allocation, as the scheduler reports it"
    )
    member: MemberStatus | None = Field(
        default=None, description="A packed member's status file, once its launcher wrote one"
    )

    @property
    def ended(self) -> bool:
        """Whether the job has finished (the scheduler says so, or it was lost)."""
        return self.status is not None and self.status.is_terminal

    @property
    def unseen(self) -> bool:
        """The scheduler did not report the job at all (neither squeue nor accounting)."""
        return self.state is None and self.status is None

    @property
    def not_understood(self) -> bool:
        """The scheduler reported a state the mapping does not know: the job keeps its status."""
        return self.state is not None and self.status is None


class TrackingPolicy(BaseModel):
    """The one place that decides what an observation means: ended, requeued, unseen for a
    while (and when that makes a job lost), a state not understood, and how many transient
    failures in a row a waiting run sits out.

    Example:
        >>> from datetime import timezone
        >>> policy = TrackingPolicy(unseen_grace_seconds=60)
        >>> start = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
        >>> policy.is_lost(start, start + timedelta(seconds=59)), policy.is_lost(start, start + timedelta(seconds=60))
        (False, True)
    """

    unseen_grace_seconds: float = Field(default=900.0, gt=0, description="Unseen this long, a job is lost")
    max_transient_failures: int = Field(default=20, ge=1, description="Failed polls in a row a waiting run sits out")

    @classmethod
    def from_settings(cls, settings: OrchestratorSettings) -> TrackingPolicy:
        """The policy configured for this orchestrator (`TACC_ORCH_UNSEEN_GRACE_SECONDS`)."""
        return cls(unseen_grace_seconds=settings.unseen_grace_seconds)

    def is_lost(self, unseen_since: datetime | None, now: datetime) -> bool:
        """Whether a job unseen since `unseen_since` has been gone too long to be coming back."""
        return unseen_since is not None and (now - unseen_since).total_seconds() >= self.unseen_grace_seconds

    @staticmethod
    def requeued(previous: JobStatus, previous_start: datetime | None, observation: JobObservation) -> bool:
        """Whether Slurm requeued a running job: it waits again, or it runs from a new start.

        Example:
            >>> TrackingPolicy.requeued(JobStatus.RUNNING, None, JobObservation(scheduler_job_id="1", status=JobStatus.QUEUING))
            True
        """
        if previous is not JobStatus.RUNNING or observation.status is None:
            return False
        start = observation.state.start if observation.state else None
        restarted = start is not None and previous_start is not None and start - previous_start > timedelta(seconds=1)
        return observation.status is JobStatus.QUEUING or restarted

    def lost_reason(self, scheduler_job_id: str, unseen_since: datetime) -> str:
        """Why a lost job ended FAILED."""
        return (
            f"lost: the scheduler has not reported job {scheduler_job_id} (neither squeue nor accounting) since "
            f"{unseen_since:%Y-%m-%d %H:%M:%S} UTC, {self.unseen_grace_seconds:.0f} s or more"
        )


def _parse_progress(text: str) -> float | None:
    try:
        return min(1.0, max(0.0, float(text.strip().splitlines()[-1])))
    except (ValueError, IndexError):
        return None


def observe(scheduler: Scheduler, jobs: Sequence[TrackedJob]) -> list[JobObservation]:
    """Observe every job with one `poll` call, whatever their number: states, progress, log
    tails, and the results of jobs that ended.

    Jobs the scheduler no longer knows come back with `state=None`: their status is left as is.
    """
    if not jobs:
        return []
    offsets = {job.progress_path: 0 for job in jobs}
    offsets.update({job.stdout_path: job.stdout_offset for job in jobs if job.stdout_path})
    offsets.update({job.status_path: 0 for job in jobs if job.status_path})
    # a member's result is read with its status (it exists once the member ends, whatever its allocation does)
    offsets.update({job.result_path: 0 for job in jobs if job.status_path and job.result_path})
    snapshot = scheduler.poll(
        {job.scheduler_job_id: job.name for job in jobs},
        offsets,
        {job.scheduler_job_id: job.result_path for job in jobs if job.result_path and not job.status_path},
    )
    states, files = snapshot.states, snapshot.files
    observations = []
    for job in jobs:
        state = states.get(job.scheduler_job_id)
        if state is not None and state.name not in (None, job.name):  # two records share a reused id: the other's job
            state = None
        observation = JobObservation(scheduler_job_id=job.scheduler_job_id, state=state)
        if state is not None:
            observation.status, observation.reason = map_scheduler_state(state)
        observation.progress = _parse_progress(files[job.progress_path].data)
        if job.stdout_path:
            observation.log = files[job.stdout_path].data
            observation.next_stdout_offset = files[job.stdout_path].next_offset
        if job.result_path in files:
            observation.result = _parse_result(files[job.result_path].data)
        if job.status_path:
            observation = member_observation(observation, _parse_member_status(files[job.status_path].data))
            if observation.result is not None:
                observation.result = with_placement(observation.result, job.name, observation.member)
        observations.append(observation)
    return observations


def _parse_member_status(text: str) -> MemberStatus | None:
    try:
        return MemberStatus.model_validate_json(text) if text.strip() else None
    except ValueError:
        return None


PILE_REASON = "waiting in its allocation for free GPUs"
LOGIN_NODE_REASON = "waiting for the login node"


def login_node_reason(system: str, error: Exception) -> str:
    """Why a system's jobs are not observed, and what brings them back.

    Example:
        >>> login_node_reason("ls6", LoginRequired("ssh jdoe@ls6: Permission denied (keyboard-interactive)."))
        'waiting for the login node: it asks for an interactive login (MFA); run `python -m deployments.login ls6` on the worker host'
    """
    if isinstance(error, LoginRequired):
        return (
            f"{LOGIN_NODE_REASON}: it asks for an interactive login (MFA); "
            f"run `python -m deployments.login {system}` on the worker host"
        )
    return f"{LOGIN_NODE_REASON}: {error}"


def member_observation(allocation: JobObservation, member: MemberStatus | None) -> JobObservation:
    """What an observation of a packed allocation means for one member, given its status file.

    - Its own final status (COMPLETED, FAILED with the exit code, CANCELLED, TIMEOUT as FAILED)
      decides, whatever the allocation does.
    - Otherwise, while the allocation runs: RUNNING when its status file says so (and not from
      an earlier attempt of a requeued allocation: a status that started before the allocation
      did is stale until the launcher runs it again), else QUEUING (it waits in the pile for
      free GPUs); while the allocation waits (or waits again after a requeue): QUEUING with the
      allocation's reason.
    - Once the allocation has ended, a member with no final status takes the allocation's end
      (TIMEOUT, CANCELLED, FAILED), and never COMPLETED: a member completes only by its own word.
    - An allocation unseen or not understood leaves the member as the allocation is.

    The member's state carries its own start and end (its status file's), so a restart is seen
    per member.

    Example:
        >>> running = JobObservation(scheduler_job_id="7", state=SchedulerJobState(job_id="7", state="RUNNING"),
        ...                          status=JobStatus.RUNNING)
        >>> member_observation(running, None).status, member_observation(running, None).reason
        (<JobStatus.QUEUING: 'QUEUING'>, 'waiting in its allocation for free GPUs')
        >>> member_observation(running, MemberStatus(state="FAILED", exit_code=2)).reason
        'exit code 2'
        >>> restarted = running.model_copy(update={"state": SchedulerJobState(job_id="7", state="RUNNING", start="2026-11-28T21:00:10Z")})
        >>> member_observation(restarted, MemberStatus(state="RUNNING", start="2026-11-28T21:00:01Z")).status  # attempt 1's
        <JobStatus.QUEUING: 'QUEUING'>
        >>> member_observation(restarted, MemberStatus(state="RUNNING", start="2026-11-28T21:00:10.4Z")).status
        <JobStatus.RUNNING: 'RUNNING'>
    """
    observed = allocation.model_copy(update={"allocation": allocation.state, "member": member})
    if member is not None and member.is_final:
        status, reason = map_slurm_state(member.state, None if member.exit_code is None else f"{member.exit_code}:0")
        state = _with_times(
            allocation.state or SchedulerJobState(job_id=allocation.scheduler_job_id, state=member.state),
            member.start,
            member.end,
        )
        return observed.model_copy(update={"status": status, "reason": reason, "state": state})
    if allocation.status is None or allocation.state is None:
        return observed
    if allocation.status.is_terminal:
        status, reason = allocation.status, allocation.reason
        if status is JobStatus.COMPLETED:
            status, reason = JobStatus.FAILED, "its allocation ended before it reported an end"
        state = _with_times(allocation.state, member.start if member else None, allocation.state.end)
        return observed.model_copy(update={"status": status, "reason": reason, "state": state})
    if (
        allocation.status is JobStatus.RUNNING
        and member is not None
        and member.state == "RUNNING"
        and not _left_by_an_earlier_attempt(member, allocation.state)
    ):
        return observed.model_copy(update={"state": _with_times(allocation.state, member.start, None)})
    reason = PILE_REASON if allocation.status is JobStatus.RUNNING else allocation.reason
    return observed.model_copy(
        update={"status": JobStatus.QUEUING, "reason": reason, "state": _with_times(allocation.state, None, None)}
    )


ATTEMPT_CLOCK_MARGIN = timedelta(seconds=1)
"""A member's start may read this much before its allocation's (Slurm's start is whole seconds; node clocks drift)."""


def _left_by_an_earlier_attempt(member: MemberStatus, allocation: SchedulerJobState) -> bool:
    """Whether a member's RUNNING status was left by an earlier attempt of its requeued
    allocation (it started before this attempt did): the launcher has not run it again yet, and
    its old start must not read as a second restart."""
    return (
        member.start is not None
        and allocation.start is not None
        and member.start < allocation.start - ATTEMPT_CLOCK_MARGIN
    )


def _with_times(state: SchedulerJobState, start: object, end: object) -> SchedulerJobState:
    """The allocation's state with a member's own start and end (validated: ISO text becomes a time)."""
    return SchedulerJobState.model_validate({**state.model_dump(), "start": start, "end": end})


def charged_su(record: JobRecord, start: datetime | None, end: datetime | None) -> float | None:
    """TACC's charge for a finished job: whole nodes x max(hours used, 0.25) x queue rate."""
    spec = find_queue(record.system, record.queue)
    if spec is None or start is None or end is None:
        return None
    return charge_su(spec, record.nodes, end - start)


def record_observation(
    store: JobStore, record: JobRecord, observation: JobObservation, policy: TrackingPolicy, now: datetime | None = None
) -> Transition | None:
    """Apply one observation to the store, as the tracking policy reads it.

    - Unseen: the first time, note since when (one write); past the policy's grace, FAILED as lost.
    - Not understood: the status stays; the reason quotes Slurm's raw state.
    - Requeued: back to QUEUING (or RUNNING from a new start), one attempt more, reason says so.
    - Otherwise the status Slurm reports, with its end and its SU charge once ended.

    Returns:
        The transition, or None when nothing about the job's status was decided.
    """
    now = now or utcnow()
    if observation.unseen:
        if record.unseen_since is None:
            store.mark_unseen(record.id, now)
        elif policy.is_lost(record.unseen_since, now):
            return _apply(
                store,
                record,
                JobStatus.FAILED,
                JobUpdate(
                    reason=policy.lost_reason(record.scheduler_job_id or "?", record.unseen_since), completed_at=now
                ),
            )
        return None
    if record.unseen_since is not None:
        store.mark_unseen(record.id, None)
    if observation.not_understood:
        return _apply(store, record, record.status, JobUpdate(reason=observation.reason))
    status = observation.status
    assert status is not None
    state = observation.state
    update = JobUpdate(
        reason=observation.reason,
        progress=1.0 if status is JobStatus.COMPLETED else observation.progress,
        started_at=state.start if state else None,
    )
    if policy.requeued(record.status, record.started_at, observation):
        update.attempt = record.attempt + 1
        update.reason = f"requeued by Slurm (attempt {update.attempt})" + (
            f": {observation.reason}" if observation.reason else ""
        )
    if status is JobStatus.COMPLETED:
        update.result = observation.result
    if status.is_terminal:
        end = (state.end if state else None) or now
        update.completed_at = end
        if record.packed:  # its share of the allocation's charge comes once the allocation has ended
            update.gpu_seconds = observation.member.gpu_seconds_until(end) if observation.member else 0.0
        else:
            update.charged_su = charged_su(record, state.start, end) if state else None
    return _apply(store, record, status, update)


def _apply(store: JobStore, record: JobRecord, status: JobStatus, update: JobUpdate) -> Transition:
    try:
        return store.transition(record.id, status, update, current=record)
    except IllegalTransition:
        current = store.get(record.id)
        if current.status.is_terminal:  # ended in the store first (a cancel): a late RUNNING/COMPLETING changes nothing
            return Transition(record=current, previous=current.status)
        raise


ADOPTED_REASON = "adopted by watch-jobs: its submitter did not record it"
NEVER_SUBMITTED_REASON = "never reached the scheduler: no job of this name, and its name is now fenced"


def reconcile_unsubmitted(
    store: JobStore,
    scheduler: Scheduler,
    records: Sequence[JobRecord],
    policy: TrackingPolicy,
    submitter_gone: Callable[[JobRecord], bool],
    timeout: timedelta,
    now: datetime | None = None,
) -> list[Transition]:
    """Settle jobs recorded QUEUED with no scheduler id whose submitter may have died between
    `sbatch` and recording its answer: those whose submission began, and those whose flow run
    has ended. Each is looked up by its name, in one call for all. A job whose submission never
    began and whose flow run is alive (a batch job waiting for a slot, a long staging) is left
    alone.

    A job found is adopted: its real id recorded, then its state applied. A job not found is
    abandoned once its submitter is gone or `timeout` after its submission began: under the
    name's lock the scheduler either finds it after all (adopted) or fences the name, so no later
    submission can run it, and the record ends FAILED with a reason that says so. One record's
    failure (a scratch quota, an unreachable daemon) is logged in its reason's place and leaves
    the others to settle.

    Returns:
        The transitions made, in order (an adoption may make two: QUEUING, then the job's state).
    """
    now = now or utcnow()
    candidates = [record for record in records if record.submit_started_at is not None or submitter_gone(record)]
    if not candidates:
        return []
    since = min(record.created_at for record in candidates) - NAME_LOOKUP_MARGIN
    found = scheduler.find(
        sorted({record_job_name(record) for record in candidates}), since
    )  # an allocation's name once
    transitions: list[Transition] = []
    for record in candidates:
        try:
            transitions += _settle(
                store,
                scheduler,
                record,
                found.get(record_job_name(record)),
                policy,
                submitter_gone(record)
                or (record.submit_started_at is not None and now - record.submit_started_at >= timeout),
                now,
            )
        except SchedulerError:
            continue  # the next sweep tries again; the other records are settled meanwhile
    return transitions


def _settle(
    store: JobStore,
    scheduler: Scheduler,
    record: JobRecord,
    state: SchedulerJobState | None,
    policy: TrackingPolicy,
    may_abandon: bool,
    now: datetime,
) -> list[Transition]:
    work_dir = JobPaths.for_job(scheduler.scratch_root, record.id, record.dataset_id).work_dir
    if state is None and may_abandon:
        state = scheduler.abandon(
            record_job_name(record),
            submission_dir(scheduler.scratch_root, record),
            record.created_at - NAME_LOOKUP_MARGIN,
        )
        if state is None:
            return [_apply(store, record, JobStatus.FAILED, JobUpdate(reason=NEVER_SUBMITTED_REASON, completed_at=now))]
    if state is None:
        return []
    return adopt(store, record, state, work_dir, policy, now)


def adopt(
    store: JobStore,
    record: JobRecord,
    state: SchedulerJobState,
    work_dir: str,
    policy: TrackingPolicy,
    now: datetime | None = None,
) -> list[Transition]:
    """Record a job found by name as the record's: its id (QUEUING), then the state it is in (a
    packed member's own state comes from its status file, an array member's from its task, at the
    next observation). An array member's id is its task's, `<array id>_<index>`, whichever task
    of the array was found."""
    job_id = (
        array_task_id(array_job_id(state.job_id), record.array_index)
        if record.array_index is not None
        else state.job_id
    )
    adopted = _apply(
        store, record, JobStatus.QUEUING, JobUpdate(scheduler_job_id=job_id, work_dir=work_dir, reason=ADOPTED_REASON)
    )
    transitions = [adopted]
    if adopted.record.scheduler_job_id == state.job_id and not adopted.record.status.is_terminal and not record.packed:
        status, reason = map_scheduler_state(state)
        observation = JobObservation(scheduler_job_id=state.job_id, state=state, status=status, reason=reason)
        transitions.append(record_observation(store, adopted.record, observation, policy, now) or adopted)
    return transitions


def read_result(scheduler: Scheduler, result_path: str) -> dict[str, object] | None:
    """The agent's result JSON, or None when it wrote none (or nothing valid)."""
    return _parse_result(scheduler.read_files({result_path: 0})[result_path].data)


def _parse_result(text: str) -> dict[str, object] | None:
    try:
        result = json.loads(text) if text else None
    except json.JSONDecodeError:
        return None
    return result if isinstance(result, dict) else None


def read_job_result(scheduler: Scheduler, record: JobRecord) -> dict[str, object] | None:
    """A submitted job's result, in one read: the agent's result JSON, and for a packed member
    where it ran too (`allocation`: the allocation's name, the node, the GPU ids it saw, its
    GPU-seconds, from its status file).

    Example:
        ```python
        read_job_result(scheduler, record)["allocation"]["gpus"]  # [2]
        ```
    """
    if record.work_dir is None:
        return None
    result_path = JobPaths.for_work_dir(record.work_dir).result
    offsets = {result_path: 0, **({member_status_path(record.work_dir): 0} if record.packed else {})}
    files = scheduler.read_files(offsets)
    result = _parse_result(files[result_path].data)
    if not record.packed:
        return result
    return with_placement(
        result or {}, record_job_name(record), _parse_member_status(files[member_status_path(record.work_dir)].data)
    )


def with_placement(result: dict[str, object], allocation_name: str, member: MemberStatus | None) -> dict[str, object]:
    """A packed member's result with where it ran (`allocation`: the allocation's name, the
    node, its GPU ids and GPU-seconds, from its status file), when it has one.

    Example:
        >>> with_placement({"chunks": 8}, "tacc-a1", MemberStatus(state="COMPLETED", node="c1", gpus=[2], gpu_seconds=9.5))
        {'chunks': 8, 'allocation': {'name': 'tacc-a1', 'node': 'c1', 'gpus': [2], 'gpu_seconds': 9.5}}
    """
    if member is None:
        return result
    return {
        **result,
        "allocation": {
            "name": allocation_name,
            "node": member.node,
            "gpus": member.gpus,
            "gpu_seconds": member.gpu_seconds,
        },
    }


def charge_ended_allocations(
    store: JobStore,
    scheduler: Scheduler,
    system: str,
    observed: Sequence[SchedulerJobState],
    now: datetime | None = None,
) -> dict[str, list[JobRecord]]:
    """Charge every packed allocation of `system` that has ended with all its members: TACC's
    charge of the allocation (its whole nodes for the time it ran) split among its members in
    proportion to the GPU-seconds each used (from their status files), stored as each member's
    `gpu_seconds` and `charged_su`. An allocation cancelled before it started is charged nothing.

    Args:
        observed: Allocations this sweep already saw (one `states` call for every member); the
            allocations whose members ended earlier but are not charged yet are asked for in
            one more `states` call, only when there are any.

    Returns:
        The members of each allocation charged now, by allocation name.

    Example:
        ```python
        charge_ended_allocations(store, scheduler, "ls6", [observation.allocation])  # {"tacc-5f0e...": [member, ...]}
        ```
    """
    now = now or utcnow()
    states = {state.name: state for state in observed if state.name}
    uncharged = store.uncharged_allocations(system, ended_after=now - timedelta(days=1))
    missing = {job_id: name for name, job_id in uncharged.items() if name not in states}
    if missing:
        states.update({state.name: state for state in scheduler.states(missing).values() if state.name})
    charged = {}
    for name, state in states.items():
        status, _ = map_scheduler_state(state)
        if name in uncharged and status is not None and status.is_terminal:
            charged[name] = _charge_allocation(store, scheduler, name, state)
    return {name: members for name, members in charged.items() if members}


def _charge_allocation(store: JobStore, scheduler: Scheduler, name: str, state: SchedulerJobState) -> list[JobRecord]:
    members = store.allocation_members(name)
    if not members or any(not member.status.is_terminal for member in members):
        return []
    unsubmitted = {
        member.id: (0.0, 0.0) for member in members if not member.work_dir
    }  # cancelled before sbatch: never in it
    members = [member for member in members if member.work_dir]
    spec = find_queue(members[0].system, members[0].queue) if members else None
    if spec is None:
        return []
    ran = state.end - state.start if state.start is not None and state.end is not None else None
    total = charge_su(spec, members[0].allocation_nodes or members[0].nodes, ran) if ran is not None else 0.0
    paths = {member.id: member_status_path(member.work_dir) for member in members if member.work_dir}
    files = scheduler.read_files({path: 0 for path in paths.values()}) if paths else {}
    gpu_seconds = []
    for member in members:
        status = _parse_member_status(files[paths[member.id]].data) if member.id in paths else None
        gpu_seconds.append(status.gpu_seconds_until(state.end or utcnow()) if status else member.gpu_seconds or 0.0)
    shares = split_charge(total, gpu_seconds)
    store.set_member_charges(
        {**unsubmitted, **{member.id: (seconds, share) for member, seconds, share in zip(members, gpu_seconds, shares)}}
    )
    return store.allocation_members(name)


def next_poll_interval(
    current: float, changed: bool, status: JobStatus | None, seconds_left: float | None, minimum: float, maximum: float
) -> float:
    """Adaptive polling: short after a change and near the end, growing while a job waits.

    Example:
        >>> next_poll_interval(10, False, JobStatus.QUEUING, None, 5, 300)
        20
        >>> next_poll_interval(60, False, JobStatus.RUNNING, 30, 5, 300)
        7.5
    """
    if changed:
        return minimum
    grown = current * (2 if status is JobStatus.QUEUING else 1.5)
    if status is JobStatus.RUNNING and seconds_left is not None:
        grown = min(grown, seconds_left / 4)
    return max(minimum, min(grown, maximum))


def job_event_payload(record: JobRecord) -> dict[str, object]:
    """What a job state change or a webhook tells the outside world about a job."""
    return {
        "id": str(record.id),
        "status": record.status.value,
        "reason": record.reason,
        "progress": record.progress,
        "system": record.system,
        "queue": record.queue,
        "scheduler_job_id": record.scheduler_job_id,
        "metrics": record.result or {},
        "output_location": JobPaths.for_work_dir(record.work_dir).output_dir if record.work_dir else None,
        "charged_su": record.charged_su,
    }


def job_resource(job_id: uuid.UUID) -> str:
    """The Prefect event resource id of a job."""
    return f"tacc.job.{job_id}"
