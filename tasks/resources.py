"""Cluster resources as a Prefect task: how busy each GPU queue of a system is."""

from __future__ import annotations

from blocks.clusters import scheduler_for
from tacc_jobs.schedulers import QueueResources
from tasks.policies import cluster_task


@cluster_task
def query_resources(system: str) -> list[QueueResources]:
    """One `sinfo` (or the embedded cluster's view): nodes allocated/idle/total, idle GPUs.

    Example:
        ```python
        query_resources("ls6")  # [QueueResources(queue='gpu-a100', nodes_idle=12, gpus_idle=36, ...), ...]
        ```
    """
    return scheduler_for(system).resources()
