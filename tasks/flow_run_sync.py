"""Keep flow runs and their jobs in step when no process holds the run: a suspended
`submit-job` run is resumed once its job starts or ends, and a job whose flow run was cancelled
while suspended (no process, so no cancellation hook) is cancelled in its scheduler."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from prefect import get_run_logger, resume_flow_run
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType

from tasks.job_tasks import JobAlreadyEnded, cancel_stored_job
from tasks.models import JobStatus
from tasks.retries import cluster_task
from tasks.store import open_job_store

PAGE = 200
SUBMIT_FLOW = "submit-job"


def _flow_runs(client: SyncPrefectClient, flow_run_filter: FlowRunFilter, flow_filter: FlowFilter | None = None) -> Iterator[FlowRun]:
    offset = 0
    while page := client.read_flow_runs(flow_run_filter=flow_run_filter, flow_filter=flow_filter, limit=PAGE, offset=offset):
        yield from page
        offset += len(page)


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
        for flow_run in _flow_runs(client, suspended, FlowFilter(name=FlowFilterName(any_=[SUBMIT_FLOW]))):
            record = store.find_by_flow_run(flow_run.id)
            if record is None or record.status in (JobStatus.QUEUED, JobStatus.QUEUING):
                continue
            resume_flow_run(flow_run.id)
            get_run_logger().info("Resumed flow run %s: job %s is %s", flow_run.name, record.id, record.status.value)
            resumed.append(flow_run.id)
    return resumed


@cluster_task
def cancel_jobs_of_cancelled_runs() -> list[uuid.UUID]:
    """Cancel every active job whose flow run was cancelled (or is being cancelled).

    Returns:
        The ids of the jobs cancelled.

    Example:
        ```python
        cancel_jobs_of_cancelled_runs()  # [UUID('5f1e...')]
        ```
    """
    store = open_job_store()
    by_flow_run = {record.flow_run_id: record for record in store.active() if record.flow_run_id is not None}
    cancelled_types = FlowRunFilterStateType(any_=[StateType.CANCELLED, StateType.CANCELLING])
    ids = list(by_flow_run)
    cancelled: list[uuid.UUID] = []
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), PAGE):
            runs = FlowRunFilter(id=FlowRunFilterId(any_=ids[start:start + PAGE]), state=FlowRunFilterState(type=cancelled_types))
            for flow_run in _flow_runs(client, runs):
                record = by_flow_run[flow_run.id]
                try:
                    cancel_stored_job(store, store.get(record.id), f"flow run {flow_run.name} cancelled")
                except JobAlreadyEnded:  # it ended on its own meanwhile
                    continue
                get_run_logger().info("Cancelled job %s (%s): its flow run %s was cancelled", record.id, record.scheduler_job_id, flow_run.name)
                cancelled.append(record.id)
    return cancelled
