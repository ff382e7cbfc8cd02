"""cluster-resources: how busy each GPU queue of a system is right now."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tacc_jobs.models import System
from tacc_jobs.schedulers import QueueResources
from tasks.resources import query_resources


@flow(name="cluster-resources", flow_run_name="cluster-resources/{system}")
def cluster_resources(system: System = System.LOCAL) -> list[QueueResources]:
    """Idle nodes and GPUs per queue of a system, also as a table artifact in the UI.

    Example:
        ```python
        from flows.resources import cluster_resources
        cluster_resources("ls6")
        ```
    """
    resources = query_resources(system.value)
    create_table_artifact(
        table=[queue.model_dump() for queue in resources],
        key=f"cluster-resources-{system.value}",
        description=f"GPU queues of {system.value}: nodes and idle GPUs",
    )
    return resources
