"""Keep flow runs and their jobs in step when no process holds the run: a suspended
`submit-job` run is resumed once its job starts or ends, a job whose flow run was cancelled
while suspended (no process, so no cancellation hook) is cancelled in its scheduler, and a run
that crashed while its jobs ran on ends as they ended."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from datetime import timedelta

from prefect import get_run_logger, resume_flow_run
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import State, StateType
from prefect.exceptions import NotPausedError
from prefect.states import Cancelled, Completed, Failed

from blocks.database import open_job_store
from tacc_jobs.exceptions import JobAlreadyEnded
from tacc_jobs.models import JobRecord, JobStatus
from tacc_jobs.walltime import utcnow
from tasks.cancellation import cancel_stored_job
from tasks.policies import cluster_task
from tasks.prefect_api import API_PAGE, read_every

SUBMIT_FLOW = "submit-job"
BATCH_FLOW = "submit-batch"
CRASHED_RUNS_LOOKBACK = timedelta(days=30)
"""How far back crashed runs are looked at: a run that crashed before recording a job stays Crashed."""


FINAL_STATE_TYPES = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED)


def ended_flow_runs(flow_run_ids: set[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these flow runs have ended (or are unknown to the server): their process can no
    longer submit anything. One paged read, whatever their number.

    Example:
        ```python
        ended_flow_runs({run_a, run_b})  # {run_b}
        ```
    """
    ids = list(flow_run_ids)
    alive: set[uuid.UUID] = set()
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), API_PAGE):
            runs = FlowRunFilter(id=FlowRunFilterId(any_=ids[start : start + API_PAGE]))
            alive |= {
                run.id
                for run in read_every(client.read_flow_runs, flow_run_filter=runs)
                if run.state is None or run.state.type not in FINAL_STATE_TYPES
            }
    return flow_run_ids - alive


@cluster_task
def resume_runs_of_started_jobs() -> list[uuid.UUID]:
    """Resume every suspended `submit-job` run whose job no longer waits in the queue.

    Returns:
        The ids of the flow runs resumed.

    Example:
        ```python
        resume_runs_of_started_jobs()  # [UUID('0b6c...')]
        ```
    """
    store = open_job_store()
    suspended = FlowRunFilter(state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"])))
    resumed: list[uuid.UUID] = []
    with get_client(sync_client=True) as client:
        for flow_run in read_every(
            client.read_flow_runs,
            flow_run_filter=suspended,
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SUBMIT_FLOW])),
        ):
            record = store.find_by_flow_run(flow_run.id)
            if record is None or record.status in (JobStatus.QUEUED, JobStatus.QUEUING):
                continue
            try:
                resume_flow_run(flow_run.id)
            except NotPausedError:  # resumed by an overlapping sweep, or cancelled, meanwhile
                continue
            except RuntimeError as error:  # the server refused: the next sweep tries again
                get_run_logger().warning("Could not resume flow run %s: %s", flow_run.name, error)
                continue
            get_run_logger().info("Resumed flow run %s: job %s is %s", flow_run.name, record.id, record.status.value)
            resumed.append(flow_run.id)
    return resumed


@cluster_task
def cancel_jobs_of_cancelled_runs() -> list[uuid.UUID]:
    """Cancel every active job whose flow run was cancelled (or is being cancelled): the job of
    a suspended `submit-job` run, every job of a `submit-batch` run.

    Returns:
        The ids of the jobs cancelled.

    Raises:
        RuntimeError: After trying them all, when some could not be cancelled (the next sweep
            tries again).

    Example:
        ```python
        cancel_jobs_of_cancelled_runs()  # [UUID('5f1e...')]
        ```
    """
    store = open_job_store()
    by_flow_run: dict[uuid.UUID, list[JobRecord]] = defaultdict(list)
    for record in store.unfinished():  # a job not yet recorded with an id is cancelled by name
        if record.flow_run_id is not None:
            by_flow_run[record.flow_run_id].append(record)
    cancelled_types = FlowRunFilterStateType(any_=[StateType.CANCELLED, StateType.CANCELLING])
    ids = list(by_flow_run)
    cancelled: list[uuid.UUID] = []
    failures: list[str] = []
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), API_PAGE):
            runs = FlowRunFilter(
                id=FlowRunFilterId(any_=ids[start : start + API_PAGE]), state=FlowRunFilterState(type=cancelled_types)
            )
            for flow_run in read_every(client.read_flow_runs, flow_run_filter=runs):
                for record in by_flow_run[flow_run.id]:
                    try:
                        cancel_stored_job(store, store.get(record.id), f"flow run {flow_run.name} cancelled")
                    except JobAlreadyEnded:  # it ended on its own meanwhile
                        continue
                    except Exception as error:  # one unreachable cluster must not keep the others' jobs running
                        failures.append(f"job {record.id}: {error}")
                        continue
                    get_run_logger().info(
                        "Cancelled job %s (%s): its flow run %s was cancelled",
                        record.id,
                        record.scheduler_job_id,
                        flow_run.name,
                    )
                    cancelled.append(record.id)
    if failures:
        raise RuntimeError(
            f"{len(failures)} job(s) of cancelled flow runs are not cancelled yet: {'; '.join(failures)}"
        )
    return cancelled


def final_state_of(records: list[JobRecord]) -> State:
    """The state that a crashed run ends in once all its jobs have ended: Failed if one failed,
    Cancelled if all were cancelled, else Completed; its message says who tracked them.

    Example:
        ```python
        final_state_of([store.get(job_id)]).name  # 'Completed'
        ```
    """
    statuses = Counter(record.status for record in records)
    if len(records) == 1:
        record = records[0]
        ended = f"job {record.id} ({record.system} #{record.scheduler_job_id}) ended {record.status.value}"
        ended += f": {record.reason}" if record.reason and record.status is not JobStatus.COMPLETED else ""
    else:
        ended = f"its {len(records)} jobs ended " + ", ".join(
            f"{count} {status.value}" for status, count in sorted(statuses.items())
        )
    message = f"{ended}; this run crashed while its job ran on, and watch-jobs tracked it to its end"
    if statuses[JobStatus.FAILED]:
        return Failed(message=message)
    if statuses[JobStatus.CANCELLED] == len(records):
        return Cancelled(message=message)
    return Completed(message=message)


@cluster_task
def finish_crashed_runs_of_ended_jobs() -> list[uuid.UUID]:
    """End each crashed `submit-job` or `submit-batch` run whose jobs have all ended, as they ended.

    A crash (SIGTERM from a host shutdown or a container stop, a stopped or killed worker) is not
    a cancel: the run's job keeps running, its record stays active, and the sweeps follow it to
    its end (webhook, event, charge). Meanwhile the run shows Crashed in the UI; once its jobs have
    ended it shows their end, Completed, Failed or Cancelled, with a message that says so.

    Returns:
        The ids of the flow runs given their final state.

    Example:
        ```python
        finish_crashed_runs_of_ended_jobs()  # [UUID('7d0e...')]
        ```
    """
    store = open_job_store()
    crashed = FlowRunFilter(
        state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.CRASHED])),
        start_time=FlowRunFilterStartTime(after_=utcnow() - CRASHED_RUNS_LOOKBACK),
    )
    finished: list[uuid.UUID] = []
    with get_client(sync_client=True) as client:
        runs = read_every(
            client.read_flow_runs,
            flow_run_filter=crashed,
            flow_filter=FlowFilter(name=FlowFilterName(any_=[SUBMIT_FLOW, BATCH_FLOW])),
        )
        job_ids = store.job_ids_by_flow_run({run.id for run in runs}) if runs else {}
        for flow_run in runs:
            records = [store.get(job_id) for job_id in job_ids[flow_run.id]]
            if not records or not all(record.status.is_terminal for record in records):
                continue
            state = final_state_of(records)
            client.set_flow_run_state(flow_run.id, state, force=True)
            get_run_logger().info("Flow run %s ended %s: %s", flow_run.name, state.name, state.message)
            finished.append(flow_run.id)
    return finished
