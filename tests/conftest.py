"""Shared fixtures: an isolated orchestrator home, Prefect's test harness, PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel, SecretStr
from sqlalchemy import Engine, create_engine

from blocks.credentials import TaccCredentials
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.schedulers import SchedulerJobState
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.ssh import SshConnection
from tacc_jobs.store import migrate

REPO = Path(__file__).resolve().parents[1]
POSTGRES_ADMIN_URL = os.environ.get("TACC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


SHARED = "slurm-and-postgresql"


def needs_slurm(item: pytest.Item) -> bool:
    return "sandbox" in getattr(item, "fixturenames", ())


def needs_postgres(item: pytest.Item) -> bool:
    callspec = getattr(item, "callspec", None)
    return "postgres_url" in getattr(item, "fixturenames", ()) or (
        callspec is not None and callspec.params.get("engine") == "postgresql"
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs (`slurm`, `postgres`, `prefect`), from its fixtures, so
    `make test-fast` can leave those out; and group them for `pytest -n 2 --dist loadgroup`:
    the one Slurm sandbox and the one PostgreSQL server, which fault tests restart, serve one
    test at a time, and an end-to-end module's stack (on its own port) serves its module on one
    worker, started once."""
    stack_modules_sharing = {
        item.module.__name__
        for item in items
        if isinstance(item, pytest.Function)
        and "stack" in item.fixturenames
        and (needs_slurm(item) or needs_postgres(item))
    }
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if needs_slurm(item):
            item.add_marker(pytest.mark.slurm)
        if needs_postgres(item):
            item.add_marker(pytest.mark.postgres)
        if "prefect_server" in fixtures or "stack" in fixtures:
            item.add_marker(pytest.mark.prefect)
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        if needs_slurm(item) or needs_postgres(item) or ("stack" in fixtures and module in stack_modules_sharing):
            item.add_marker(pytest.mark.xdist_group(SHARED))
        elif "stack" in fixtures:
            item.add_marker(pytest.mark.xdist_group(f"stack-{module}"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (`CI` set) a skipped test is a failed one: the suite runs whole or not at all."""
    report = yield
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every test must run: {report.longrepr}"
    return report


@pytest.fixture(scope="session", autouse=True)
def orchestrator_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own TACC_ORCH_HOME (SQLite store, local cluster)."""
    home = tmp_path_factory.mktemp("tacc-home")
    settings = {
        "TACC_ORCH_HOME": str(home),
        "TACC_ORCH_POLL_MIN_SECONDS": "0.2",
        "TACC_ORCH_POLL_MAX_SECONDS": "1",
        "TACC_ORCH_REMOTE_POLL_MIN_SECONDS": "0.5",
        "TACC_ORCH_ALLOW_PRIVATE_WEBHOOKS": "true",
    }
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    yield home
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """A real Prefect server for the session (Prefect's own test harness)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def new_postgres_database() -> str:
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, as a SQLAlchemy URL."""
    name = f"tacc_orch_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The session's PostgreSQL database (the blocks' and flows' tests share it)."""
    return new_postgres_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same tests on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        from tacc_jobs.store.engine import sqlite_engine

        engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    else:  # a database of its own: the session's is migrated once per process and must stay so
        engine = create_engine(new_postgres_database())
    yield engine
    engine.dispose()
    if request.param == "postgresql":
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE "{engine.url.database}" WITH (FORCE)')


@pytest.fixture
def warehouse(engine: Engine) -> Warehouse:
    """The accounting warehouse on a migrated database (SQLite and PostgreSQL)."""
    migrate(engine)
    return Warehouse(engine)


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


def start_now(job_id: str) -> None:
    """A requeued job waits for its begin time (a minute or two); let it start now if it still waits.

    Not within the second its previous attempt ended: slurmd still holds that attempt's revoked
    credential and kills the restart ("Job credential revoked"), a real FAILED that Slurm's own
    begin-time delay exists to avoid.
    """
    ends = subprocess.run(
        ["sacct", "-D", "-X", "--noheader", "--parsable2", f"--jobs={job_id}", "--format=End"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    last_end = max((datetime.fromisoformat(end) for end in ends if end[:1].isdigit()), default=datetime.now())
    time.sleep(max(0.0, (last_end + timedelta(seconds=2) - datetime.now()).total_seconds()))
    subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)


def accounted(job_id: str, name: str, fields: str = "State") -> str:
    """Slurm accounting's row for one job (as root), bounded by its name as well as its id: ids
    repeat once the controller's state is cleared (test_faults does), and `sacct -j` alone
    answers the newest job of that id, which may be an older job while ours is not yet written."""
    return subprocess.run(
        [
            "sacct",
            "--allusers",
            "--noheader",
            "-X",
            "--parsable2",
            "--duplicates",
            "--starttime=now-2days",
            f"--jobs={job_id}",
            f"--name={name}",
            f"--format={fields}",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()


def state_of(cluster: LocalScheduler, job_id: str) -> SchedulerJobState:
    """One embedded-cluster job's state (its name, half of its identity, read from the cluster's record)."""
    return cluster.states({job_id: cluster.load_job(job_id).name})[job_id]


class Sandbox(BaseModel):
    """How to reach the sandbox Slurm cluster (scripts/slurm-sandbox.sh)."""

    host: str
    port: int
    user: str
    key: Path
    known_hosts: Path
    account: str

    def connect(self) -> SshConnection:
        """A new multiplexed connection as the sandbox's test user."""
        return SshConnection(
            host=self.host,
            port=self.port,
            username=self.user,
            private_key_path=self.key,
            known_hosts=self.known_hosts.read_text().strip(),
        )


@pytest.fixture(scope="session")
def sandbox() -> Sandbox:
    """The single-node Slurm cluster with sshd on loopback, brought up (or found up) by the
    project's script. A cluster that cannot come up fails the tests; it never skips them."""
    script = REPO / "scripts" / "slurm-sandbox.sh"
    up = subprocess.run([str(script), "up"], capture_output=True, text=True, timeout=900)
    if up.returncode != 0:
        pytest.fail(f"the Slurm sandbox did not come up:\n{up.stdout}\n{up.stderr}")
    values = dict(
        line.split("=", 1)
        for line in subprocess.run([str(script), "env"], capture_output=True, text=True, check=True).stdout.split()
    )
    return Sandbox(
        host=values["TACC_SANDBOX_HOST"],
        port=int(values["TACC_SANDBOX_PORT"]),
        user=values["TACC_SANDBOX_USER"],
        key=Path(values["TACC_SANDBOX_KEY"]),
        known_hosts=Path(values["TACC_SANDBOX_KNOWN_HOSTS"]),
        account=values["TACC_SANDBOX_ACCOUNT"],
    )


@pytest.fixture(scope="session")
def sandbox_connection(sandbox: Sandbox) -> Iterator[SshConnection]:
    """One connection for the session, as a TACC user keeps one MFA login."""
    connection = sandbox.connect()
    yield connection
    connection.close()


@pytest.fixture
def slurm(sandbox: Sandbox, sandbox_connection: SshConnection) -> SlurmScheduler:
    """The Slurm backend on the sandbox, with a scratch directory of its own."""
    return SlurmScheduler(sandbox_connection, "ls6", f"/home/{sandbox.user}/scratch/t-{uuid.uuid4().hex[:8]}")


SCRATCH = "/home/{user}/scratch/orchestrator"


@pytest.fixture
def ls6_block(sandbox: Sandbox, prefect_server: None) -> TaccCredentials:
    """The sandbox saved as the `ls6` TaccCredentials block, as an operator would save TACC's."""
    block = TaccCredentials(
        username=sandbox.user,
        host=sandbox.host,
        port=sandbox.port,
        private_key=SecretStr(sandbox.key.read_text()),
        known_hosts=sandbox.known_hosts.read_text().strip(),
        allocation=sandbox.account,
        scratch_root=SCRATCH.format(user=sandbox.user),
    )
    block.save("ls6", overwrite=True)
    return block


@pytest.fixture
def postgres_block(postgres_url: str, prefect_server: None, monkeypatch: pytest.MonkeyPatch) -> str:
    """The project's database on PostgreSQL through a saved SqlAlchemyConnector block."""
    from prefect_sqlalchemy import SqlAlchemyConnector

    name = f"db-{uuid.uuid4().hex[:8]}"
    SqlAlchemyConnector(connection_info=postgres_url).save(name)
    monkeypatch.setenv("TACC_ORCH_DATABASE_BLOCK", name)
    return postgres_url


class Webhook:
    """A real HTTP endpoint on loopback that records what it receives."""

    def __init__(self, status: int) -> None:
        received: list[dict[str, Any]] = []
        hosts: list[str] = []
        self.received, self.hosts = received, hosts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                hosts.append(self.headers["Host"])
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def webhook(request: pytest.FixtureRequest) -> Iterator[Webhook]:
    hook = Webhook(getattr(request, "param", 200))
    yield hook
    hook.server.shutdown()


# The Tapis tests' fixtures, for every test module (tapis_fixtures needs Sandbox, defined above).
from tests.tapis_fixtures import (  # noqa: E402, F401
    tapis_block,
    tapis_client,
    tapis_scheduler,
    tapis_server,
    tapis_server_session,
)
