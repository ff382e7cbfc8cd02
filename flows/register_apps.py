"""register-tapis-apps: the shipped agents' Tapis apps, registered or updated for a system."""

from __future__ import annotations

from prefect import flow

from tacc_jobs.models import System
from tasks.tapis_apps import register_agent_apps


@flow(name="register-tapis-apps", flow_run_name="register-tapis-apps/{system}")
def register_tapis_apps(system: System = System.LS6) -> dict[str, str]:
    """Register (or update) one Tapis app per shipped agent (`tacc-orch-alphacal`, ...) on the
    execution system of the system's `TapisCredentials` block, its archive uploaded to
    `<scratch_root>/apps`: a new deployment has nothing to click in a portal. Run it once per
    system, and again after an agent's template changes.

    Example:
        ```python
        from flows.register_apps import register_tapis_apps
        register_tapis_apps("ls6")  # {'tacc-orch-alphacal': 'registered'}
        ```
    """
    return register_agent_apps(system.value)
