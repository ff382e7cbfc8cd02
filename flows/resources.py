"""cluster-resources: how busy each GPU queue of a system is right now."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_table_artifact

from tasks.clusters import scheduler_for
from tasks.models import System
from tasks.retries import cluster_task
from tasks.scheduler import QueueResources


@cluster_task
def query_resources(system: str) -> list[QueueResources]:
    """One `sinfo` (or the embedded cluster's view): nodes allocated/idle/total, idle GPUs.

    Example:
        ```python
        query_resources("ls6")  # [QueueResources(queue='gpu-a100', nodes_idle=12, gpus_idle=36, ...), ...]
        ```
    """
    return scheduler_for(system).resources()


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
