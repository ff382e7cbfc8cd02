"""stage-dataset: move one dataset to a system's scratch, verified, with its status recorded."""

from __future__ import annotations

from prefect import flow

from blocks.database import open_staging_store
from tacc_jobs.models import DatasetId, Priority, System
from tacc_jobs.store import DatasetStaging
from tasks.staging import stage_dataset_to_scratch


@flow(name="stage-dataset", flow_run_name="stage-dataset/{system}/{dataset_id}")
def stage_dataset(
    dataset_id: DatasetId, system: System = System.LOCAL, priority: Priority = Priority.NORMAL
) -> DatasetStaging:
    """Stage a dataset ahead of its jobs: checked at the source, transfer time estimated,
    queued by priority (high first), rsynced over the system's SSH connection (resumable,
    checksummed), verified, and recorded QUEUED -> STAGING -> STAGED (or FAILED with a reason).

    Example:
        ```python
        from flows.stage import stage_dataset
        stage_dataset("VLASS2.1.eb123456", "ls6", priority="high").status  # StagingStatus.STAGED
        ```
    """
    return stage_dataset_to_scratch(dataset_id, system.value, priority.value)


def staging_status(dataset_id: str, system: str) -> DatasetStaging | None:
    """Where a dataset stands on a system (None when it was never requested).

    Example:
        ```python
        staging_status("VLASS2.1.eb123456", "ls6").status  # StagingStatus.STAGED
        ```
    """
    return open_staging_store().get(system, dataset_id)
