"""Tapis app definitions of the shipped agents, and their registration.

Each agent (`tacc_jobs/agents/<Agent>.sh`) is one Tapis app, `tacc-orch-<agent>`, of the ZIP
runtime: its archive holds `tapisjob_app.sh`, which writes the job's parameters and runs the
agent's template, exactly as the Slurm job script does. The archive lives in the execution
system's scratch (`<scratch_root>/apps/`); registering uploads it and creates the app version,
or replaces its definition when it exists, so a new deployment has nothing to click.
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from typing import Literal

from tacc_jobs.agents import agent_template, known_agents
from tacc_jobs.schedulers.job_script import WRITE_PARAMS
from tacc_jobs.tapis.client import TapisClient
from tacc_jobs.tapis.models import AppDefinition

APP_VERSION = "1.0"
APP_ENTRY = "tapisjob_app.sh"


def app_id(agent: str) -> str:
    """The Tapis app id of an agent.

    Example:
        >>> app_id("AlphaCal")
        'tacc-orch-alphacal'
    """
    return f"tacc-orch-{agent.lower()}"


def app_archive(agent: str) -> bytes:
    """The ZIP runtime's archive of an agent: `tapisjob_app.sh`, executable.

    Example:
        >>> import io, zipfile
        >>> zipfile.ZipFile(io.BytesIO(app_archive("AlphaCal"))).namelist()
        ['tapisjob_app.sh']
    """
    entry = zipfile.ZipInfo(APP_ENTRY, date_time=(2026, 1, 1, 0, 0, 0))
    entry.external_attr = 0o755 << 16
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(entry, f"#!/bin/bash\n{WRITE_PARAMS}\n{agent_template(agent)}")
    return buffer.getvalue()


def app_definition(agent: str, exec_system_id: str, scratch_root: str) -> AppDefinition:
    """The app of an agent on one execution system, its archive under `<scratch_root>/apps`.

    Example:
        >>> app_definition("AlphaCal", "ls6", "/scratch/01234/jdoe/tacc").container_image
        '/scratch/01234/jdoe/tacc/apps/tacc-orch-alphacal-1.0.zip'
    """
    return AppDefinition(
        id=app_id(agent),
        version=APP_VERSION,
        description=f"{agent}, a tacc-orchestrator agent (job script template tacc_jobs/agents/{agent}.sh)",
        container_image=posixpath.join(scratch_root, "apps", f"{app_id(agent)}-{APP_VERSION}.zip"),
        job_attributes={"execSystemId": exec_system_id, "archiveOnAppError": True, "isMpi": False},
        tags=["tacc-orchestrator", agent],
    )


def register_apps(
    client: TapisClient, exec_system_id: str, scratch_root: str, agents: list[str] | None = None
) -> dict[str, Literal["registered", "updated"]]:
    """Upload each agent's archive and register its app version, or update the one that exists.

    Example:
        ```python
        register_apps(tapis, "ls6", "/scratch/01234/jdoe/tacc")  # {'tacc-orch-alphacal': 'registered'}
        ```
    """
    done: dict[str, Literal["registered", "updated"]] = {}
    for agent in sorted(agents or known_agents()):
        app = app_definition(agent, exec_system_id, scratch_root)
        client.upload(exec_system_id, app.container_image, app_archive(agent))
        if client.get_app(app.id, app.version) is None:
            client.create_app(app)
            done[app.id] = "registered"
        else:
            client.put_app(app)
            done[app.id] = "updated"
    return done
