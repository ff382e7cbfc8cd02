"""Shared fixtures: an isolated orchestrator home, Prefect's test harness, PostgreSQL."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Engine, create_engine

POSTGRES_ADMIN_URL = os.environ.get("TACC_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session", autouse=True)
def orchestrator_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test session gets its own TACC_ORCH_HOME (SQLite store, local cluster)."""
    home = tmp_path_factory.mktemp("tacc-home")
    settings = {"TACC_ORCH_HOME": str(home), "TACC_ORCH_POLL_MIN_SECONDS": "0.2", "TACC_ORCH_POLL_MAX_SECONDS": "1"}
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


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A fresh database on the PostgreSQL server at 127.0.0.1:5432, as a SQLAlchemy URL."""
    name = f"tacc_orch_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The same tests on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        from tasks.store.engine import sqlite_engine

        engine = sqlite_engine(f"sqlite:///{tmp_path / 'jobs.db'}")
    else:
        engine = create_engine(request.getfixturevalue("postgres_url"))
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP TABLE IF EXISTS jobs; DROP TABLE IF EXISTS alembic_version")
    yield engine
    engine.dispose()


def wait_until(condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.1) -> object:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")
