"""Registering the agents' Tapis apps as a Prefect task."""

from __future__ import annotations

from prefect import get_run_logger

from blocks.tapis import saved_tapis_credentials
from tacc_jobs.tapis.apps import register_apps
from tasks.policies import cluster_task


@cluster_task
def register_agent_apps(system: str) -> dict[str, str]:
    """Upload each shipped agent's archive and register (or update) its Tapis app for `system`.

    Example:
        ```python
        register_agent_apps("ls6")  # {'tacc-orch-alphacal': 'registered'}
        ```
    """
    credentials = saved_tapis_credentials(system)
    if credentials is None:
        raise ValueError(f"system {system!r}: save a TapisCredentials block named {system!r} first (see README)")
    done = register_apps(credentials.shared_client(), credentials.exec_system_id, credentials.scratch_root)
    for app, action in done.items():
        get_run_logger().info(
            "Tapis app %s %s on %s (%s)", app, action, credentials.exec_system_id, credentials.base_url
        )
    return dict(done)
