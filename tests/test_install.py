"""What is installed is what was tested: the lock, the environment that holds it, and the
scheduler check that sees a server whose schedules never fire."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import tomllib
from packaging.version import Version

from deployments.health import SchedulerHealth, last_scheduler_error
from tests.conftest import REPO

UV = REPO / ".tools" / "uv" / "bin" / "uv"


def locked_versions() -> dict[str, Version]:
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    return {package["name"]: Version(package["version"]) for package in lock["package"] if "version" in package}


def uv_check(environment: Path) -> subprocess.CompletedProcess[str]:
    """`uv sync --check` of the locked set (with the test extra) against `environment`."""
    env = {
        **os.environ,
        "UV_PROJECT_ENVIRONMENT": str(environment),
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    return subprocess.run(
        [str(UV), "sync", "--locked", "--extra", "test", "--check"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_lock_holds_the_versions_prefect_3_8_needs() -> None:
    versions = locked_versions()
    assert versions["sqlalchemy"] < Version("2.1"), "SQLAlchemy 2.1 stops Prefect 3.8's scheduler"
    assert versions["fastapi"] == Version("0.150.0") and Version("3.8") <= versions["prefect"] < Version("3.9")


def test_the_test_environment_is_the_locked_one() -> None:
    checked = uv_check(REPO / ".venv")
    assert checked.returncode == 0, checked.stderr


def test_the_check_refuses_an_environment_that_is_not_the_lock(tmp_path: Path) -> None:
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", str(REPO / ".venv" / "bin" / "python"), str(tmp_path / "venv")],
        check=True,
        timeout=60,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )
    checked = uv_check(tmp_path / "venv")
    assert checked.returncode != 0
    assert f"sqlalchemy=={locked_versions()['sqlalchemy']}" in checked.stderr, checked.stderr


def test_the_last_scheduler_error_is_read_from_a_real_server_log() -> None:
    """The log of a Prefect 3.8.8 server on SQLAlchemy 2.1.9, as it was captured."""
    error = last_scheduler_error(REPO / "tests" / "data" / "server-log-sqlalchemy-2.1.txt")
    assert error is not None and error.logged_at == "18:02:01.473"
    assert error.error == (
        "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement; "
        "please supply a bulk_dml decorated function"
    )


def test_a_server_log_with_other_errors_only_has_no_scheduler_error(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "18:00:00.000 | ERROR   | prefect.server.events - something else\nValueError: no\n"
        "18:00:01.000 | INFO    | docket.dependencies - schedule_deployments(){schedule_deployments}\n"
    )
    assert last_scheduler_error(log) is None
    assert last_scheduler_error(tmp_path / "missing.log") is None


def test_a_scheduler_with_no_runs_for_a_scheduled_deployment_is_failing() -> None:
    health = SchedulerHealth(
        scheduled_deployments=["cleanup", "watch-jobs"],
        waiting_for_runs=["cleanup", "watch-jobs"],
        next_run=None,
        last_error=None,
    )
    assert not health.ok and health.lines() == [
        "scheduler  FAILING: no run scheduled for any of 2 scheduled deployments"
    ]


GROUPED_TESTS = """
import os
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def stack():
    yield


@pytest.mark.parametrize("n", range(6))
def test_in_the_stack_group(stack, n):
    with Path(os.environ["WORKERS_FILE"]).open("a") as seen:
        seen.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")


@pytest.mark.parametrize("n", range(6))
def test_free(n):
    pass
"""


def test_make_test_keeps_a_group_on_one_worker(tmp_path: Path) -> None:
    """`make test`'s grouping (tests/conftest.py's marks, read by pytest-xdist's loadgroup) holds
    with the installed pytest: pytest 9.2 made loadgroup spread every group over both workers."""
    (tmp_path / "conftest.py").write_text("from tests.conftest import pytest_collection_modifyitems  # noqa: F401\n")
    (tmp_path / "test_grouped.py").write_text(GROUPED_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    workers = tmp_path / "workers.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO), "WORKERS_FILE": str(workers)}
    run = subprocess.run(
        [
            str(REPO / ".venv" / "bin" / "python"),
            "-m",
            "pytest",
            "-q",
            "-n",
            "2",
            "--dist",
            "loadgroup",
            "-p",
            "no:cacheprovider",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    seen = workers.read_text().split()
    assert len(seen) == 6 and len(set(seen)) == 1, seen
