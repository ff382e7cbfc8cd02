"""Fixtures of the Tapis tests: the Tapis test server on the sandbox, clients, a scheduler, the block.

tests/conftest.py imports them for every test module.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from blocks.tapis import TapisCredentials
from tacc_jobs.planning.catalog import system_queues
from tacc_jobs.schedulers.tapis import TapisScheduler
from tacc_jobs.tapis.apps import register_apps
from tacc_jobs.tapis.client import TapisClient
from tests.conftest import Sandbox
from tests.tapis_server import CLIENT_ID, TapisTestServer, client_for

TAPIS_SCRATCH = "/home/{user}/scratch/tapis"


@pytest.fixture(scope="session")
def tapis_server_session(sandbox: Sandbox) -> Iterator[TapisTestServer]:
    """The Tapis test server for the session: execution system `ls6` is the sandbox."""
    connection = sandbox.connect()
    server = TapisTestServer(
        connection,
        exec_system_id="ls6",
        queues={spec.queue for spec in system_queues("ls6")},
        username=sandbox.user,
        password=secrets.token_urlsafe(16),
        client_id=CLIENT_ID,
        client_key=secrets.token_urlsafe(16),
    ).start()
    yield server
    server.stop()
    connection.close()


@pytest.fixture
def tapis_server(tapis_server_session: TapisTestServer) -> Iterator[TapisTestServer]:
    """The server, reset for one test; the test fails on any call that breaks Tapis's specifications."""
    server = tapis_server_session
    server.token_ttl = 3600.0
    server.faults.clear()
    server.lost_answers.clear()
    server.violations.clear()
    server.undeclared.clear()
    server.reset_counts()
    server.token_grants.clear()
    yield server
    assert server.violations == [], "calls that do not conform to Tapis's OpenAPI specifications"


@pytest.fixture
def tapis_client(tapis_server: TapisTestServer) -> Iterator[TapisClient]:
    with client_for(tapis_server) as client:
        yield client


@pytest.fixture
def tapis_scheduler(tapis_client: TapisClient, sandbox: Sandbox) -> TapisScheduler:
    """The Tapis backend on execution system `ls6`, its apps registered under a scratch of its own."""
    scratch = f"/home/{sandbox.user}/scratch/tapis-{uuid.uuid4().hex[:8]}"
    register_apps(tapis_client, "ls6", scratch)
    return TapisScheduler(
        tapis_client, system="ls6", exec_system_id="ls6", scratch_root=scratch, allocation=sandbox.account
    )


@pytest.fixture
def tapis_block(tapis_server: TapisTestServer, sandbox: Sandbox, prefect_server: None) -> Iterator[TapisCredentials]:
    """The test server saved as the `ls6` TapisCredentials block (so ls6 goes through Tapis),
    removed afterwards (other tests reach ls6 over SSH)."""
    block = TapisCredentials(
        base_url=tapis_server.base_url,
        username=sandbox.user,
        password=SecretStr(tapis_server.password),
        exec_system_id="ls6",
        scratch_root=TAPIS_SCRATCH.format(user=sandbox.user),
        allocation=sandbox.account,
        backoff_seconds=0.05,
    )
    block.save("ls6", overwrite=True)
    yield block
    TapisCredentials.delete("ls6")
