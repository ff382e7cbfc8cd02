"""End to end through Tapis: the local stack's deployments (real Prefect server and worker) run
against the Tapis test server, the system `ls6` saved as a TapisCredentials block on the stack."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from blocks.tapis import TapisCredentials
from tacc_jobs.models import JobStatus
from tests.conftest import Sandbox
from tests.tapis_fixtures import TAPIS_SCRATCH
from tests.tapis_server import TapisTestServer
from tests.test_e2e import prefect_cli, running_stack, stack_store, sweep

PORT = 4327  # not test_e2e's: a stack of its own


pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The local stack on a port of its own."""
    with running_stack(tmp_path_factory, PORT) as env:
        yield env


@pytest.fixture
def stack_tapis_block(
    stack: dict[str, str], tapis_server: TapisTestServer, sandbox: Sandbox
) -> Iterator[TapisCredentials]:
    """`ls6` saved on the stack's server as a TapisCredentials block pointing at the test server."""
    block = TapisCredentials(
        base_url=tapis_server.base_url,
        username=sandbox.user,
        password=SecretStr(tapis_server.password),
        exec_system_id="ls6",
        scratch_root=TAPIS_SCRATCH.format(user=sandbox.user),
        allocation=sandbox.account,
    )
    with temporary_settings(
        updates={PREFECT_API_URL: stack["PREFECT_API_URL"], PREFECT_API_AUTH_STRING: stack["PREFECT_API_AUTH_STRING"]}
    ):
        block.save("ls6", overwrite=True)
        yield block
        TapisCredentials.delete("ls6")


def deployment_run(stack: dict[str, str], deployment: str, *parameters: str) -> str:
    params = [item for parameter in parameters for item in ("--param", parameter)]
    run = prefect_cli(stack, "deployment", "run", deployment, *params, "--watch", timeout=300)
    assert run.returncode == 0 and "Flow run finished successfully in 'Completed'" in run.stdout, (
        run.stdout[-3000:] + run.stderr[-3000:]
    )
    return run.stdout


@pytest.mark.usefixtures("stack_tapis_block")
def test_deployment_runs_through_tapis(stack: dict[str, str], tapis_server: TapisTestServer) -> None:
    deployment_run(stack, "register-tapis-apps/register-tapis-apps", "system=ls6")
    user = f"tapis{uuid.uuid4().hex[:6]}"
    request = {
        "agent": "AlphaCal",
        "dataset_id": "VLASS2.1.eb123456",
        "gpu_count": 3,
        "max_runtime": "00:10:00",
        "user_id": user,
        "system": "ls6",
        "params": {"rfi_strategy": "high", "step_seconds": 0.3},
    }
    started = time.monotonic()
    deployment_run(stack, "submit-job/submit-job", f"request={json.dumps(request)}")
    print(
        f"\nsubmit-job deployment run through Tapis: {time.monotonic() - started:.1f} s from `prefect deployment run` to Completed"
    )
    record = stack_store(stack).history(user).items[0]
    assert record.status is JobStatus.COMPLETED and record.result["samples"] == 12000
    assert tapis_server.jobs[record.scheduler_job_id]["status"] == "FINISHED"
    deployment_run(stack, "stage-dataset/stage-dataset", "dataset_id=VLASS2.1.eb123456", "system=ls6")
    sweep(stack)  # sweep() tries again while a scheduled sweep is under way
    deployment_run(stack, "ingest-job-metadata/ingest-job-metadata", "source=sacct", "system=ls6")
