"""Which scheduler and agent runtime serve a system: the embedded cluster, TACC through Tapis
(a `TapisCredentials` block saved under the system's name), or TACC over SSH."""

from __future__ import annotations

import atexit
import posixpath
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Literal

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from blocks.credentials import TaccCredentials
from blocks.database import load_saved
from blocks.tapis import saved_tapis_credentials
from tacc_jobs.agents import AGENTS_DIR
from tacc_jobs.schedulers import Scheduler
from tacc_jobs.schedulers.job_script import AgentRuntime
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.settings import get_settings
from tacc_jobs.ssh import SshConnection
from tacc_jobs.staging.transfer import LocalCopy, RsyncOverSsh, Transfer

SESSION_SLOT_TIMEOUT_SECONDS = 600  # then TimeoutError, which tasks retry as transient
_connections: dict[str, SshConnection] = {}
_connections_lock = threading.Lock()


@atexit.register
def close_connections() -> None:
    """Close every cluster connection of this process (and delete its key material)."""
    while _connections:
        _connections.popitem()[1].close()


def saved_credentials(system: str) -> TaccCredentials | None:
    """The `TaccCredentials` block saved under the system's name; None for the embedded cluster
    or when no such block is saved (planning needs none: the catalog is data)."""
    return None if system == "local" else load_saved(TaccCredentials, system)


def credentials_for(system: str) -> TaccCredentials:
    """The `TaccCredentials` block saved under the system's name, checked for a scratch root.

    Raises:
        ValueError: When no block is saved for the system, or it has no scratch_root.
    """
    credentials = saved_credentials(system)
    if credentials is None:
        raise ValueError(f"system {system!r}: save a TaccCredentials block named {system!r} (see README)")
    if not credentials.scratch_root:
        raise ValueError(f"TaccCredentials block {system!r}: scratch_root is required to stage and submit jobs")
    return credentials


def scheduler_for(system: str) -> Scheduler:
    """The scheduler of `system`: the embedded cluster for `local`, the Tapis Jobs API when a
    `TapisCredentials` block is saved under its name, else Slurm over one SSH connection per
    system and process (TACC's MFA: log in once, multiplex the rest).

    Example:
        ```python
        scheduler_for("ls6").resources()
        ```
    """
    if system == "local":
        return LocalScheduler(get_settings().local_cluster_dir)
    if (tapis := saved_tapis_credentials(system)) is not None:
        return tapis.scheduler(system)
    credentials = credentials_for(system)
    with _connections_lock:  # tasks run in threads: one connection (and key file) per system
        if system not in _connections:
            _connections[system] = credentials.get_client(session_slot=ssh_session_slot(credentials.host))
        connection = _connections[system]
    return SlurmScheduler(connection, system, credentials.scratch_root or "")


def ssh_session_slot(host: str) -> Callable[[], AbstractContextManager[object]]:
    """A slot of the global concurrency limit `ssh-sessions-<host>`, which caps the SSH sessions
    every flow run of this Prefect server opens to one login host at once. The limit is created
    (`ssh_sessions_per_host`) when missing; operators change it in the UI's Concurrency page.

    Example:
        ```python
        with ssh_session_slot("ls6.tacc.utexas.edu")():
            ...  # one remote command
        ```
    """
    name = f"ssh-sessions-{host}"
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=get_settings().ssh_sessions_per_host)
                )
            except ObjectAlreadyExists:  # another process created it first
                pass
    # a lease the server could not renew for a while must not kill a long rsync or a job's wait
    return partial(
        concurrency,
        name,
        occupy=1,
        strict=True,
        timeout_seconds=SESSION_SLOT_TIMEOUT_SECONDS,
        raise_on_lease_renewal_failure=False,
    )


def transfer_for(system: str) -> Transfer:
    """How datasets reach `system`'s scratch: a local copy, the Tapis Files API, or rsync over
    the system's connection."""
    if system == "local":
        return LocalCopy()
    if (tapis := saved_tapis_credentials(system)) is not None:
        return tapis.transfer()
    scheduler = scheduler_for(system)
    assert isinstance(scheduler, SlurmScheduler)
    return RsyncOverSsh(scheduler.transport)  # type: ignore[arg-type]


def transfer_host(system: str) -> str:
    """The host transfers to `system` go to (bandwidth is measured per host)."""
    if system == "local":
        return LocalCopy.host
    tapis = saved_tapis_credentials(system)
    return tapis.host if tapis is not None else credentials_for(system).host


def agent_runtime(system: str) -> AgentRuntime:
    """How agents run on `system`: here with this interpreter; at TACC from `<scratch>/agents`."""
    if system == "local":
        return AgentRuntime(python=sys.executable, agent_home=str(AGENTS_DIR))
    tapis = saved_tapis_credentials(system)
    scratch_root = tapis.scratch_root if tapis is not None else credentials_for(system).scratch_root
    return AgentRuntime(python="python3", agent_home=posixpath.join(scratch_root or "", "agents"))


def packed_placement(system: str) -> Literal["srun", "local"] | None:
    """How a packed allocation on `system` places its members: plain processes on the embedded
    cluster, `srun` steps on Slurm over SSH; None through Tapis (a Tapis job is one app run, so
    a batch there goes one job per request).

    Example:
        ```python
        packed_placement("stampede3")  # "srun"
        ```
    """
    if system == "local":
        return "local"
    return None if saved_tapis_credentials(system) is not None else "srun"


def poll_floor_seconds(system: str) -> float:
    """The shortest poll interval allowed on `system`."""
    settings = get_settings()
    return settings.poll_min_seconds if system == "local" else settings.remote_poll_min_seconds
