"""Which scheduler and agent runtime serve a system: the embedded cluster, or TACC over SSH."""

from __future__ import annotations

import sys

from tasks.agents import AGENTS_DIR
from tasks.job_script import AgentRuntime
from tasks.scheduler import Scheduler
from tasks.scheduler.local import LocalScheduler
from tasks.settings import get_settings


def scheduler_for(system: str) -> Scheduler:
    """The scheduler of `system`: the embedded local cluster for `local`.

    Example:
        ```python
        scheduler_for("local").resources()
        ```
    """
    if system == "local":
        return LocalScheduler(get_settings().local_cluster_dir)
    raise NotImplementedError(f"system {system!r}: the Slurm-over-SSH backend is not built yet")


def agent_runtime(system: str) -> AgentRuntime:
    """How agents run on `system`: locally with this interpreter and the shipped agents."""
    if system == "local":
        return AgentRuntime(python=sys.executable, agent_home=str(AGENTS_DIR))
    raise NotImplementedError(f"system {system!r}: the Slurm-over-SSH backend is not built yet")
