"""TaccCredentials: secrets stay secret, key material is private and short-lived, blocks load."""

from __future__ import annotations

import shlex
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
from prefect.exceptions import ObjectNotFound
from pydantic import SecretStr, ValidationError

from blocks.clusters import ssh_session_slot
from blocks.credentials import TaccCredentials
from flows.resources import cluster_resources
from tacc_jobs.exceptions import PermanentSchedulerError, TransientSchedulerError
from tacc_jobs.schedulers.slurm import scheduler_error
from tests.conftest import Sandbox


def credentials(sandbox: Sandbox, **fields: object) -> TaccCredentials:
    return TaccCredentials(username=sandbox.user, host=sandbox.host, port=sandbox.port,
                           known_hosts=sandbox.known_hosts.read_text().strip(), allocation=sandbox.account,
                           scratch_root=f"/home/{sandbox.user}/scratch/orchestrator", **fields)


def test_every_field_is_described() -> None:
    assert all(field.description for field in TaccCredentials.model_fields.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [("username", "jdoe; rm -rf /"), ("host", "ls6 -oProxyCommand=x"), ("allocation", "A B"), ("scratch_root", "relative/path"),
     ("scratch_root", "/scratch/../etc"), ("scratch_root", "/scratch/$(id)")],
)
def test_fields_are_validated(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TaccCredentials(**{"username": "jdoe", "host": "ls6.tacc.utexas.edu", field: value})


def test_private_key_is_written_private_used_and_deleted(sandbox: Sandbox) -> None:
    key_text = sandbox.key.read_text()
    block = credentials(sandbox, private_key=SecretStr(key_text))
    assert key_text not in repr(block) and key_text not in str(block.model_dump())
    connection = block.get_client()
    written = [path for path in Path(connection._dir).iterdir() if path.name == "id_key"]
    assert len(written) == 1 and stat.S_IMODE(written[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(connection._dir).stat().st_mode) == 0o700
    assert connection.run(["whoami"]).stdout.strip() == sandbox.user
    assert all(key_text.strip() not in part for part in connection._base)
    connection.close()
    assert not Path(connection._dir).exists()


def test_commands_reuse_one_master_connection(sandbox: Sandbox) -> None:
    with credentials(sandbox, private_key_path=sandbox.key).get_client() as connection:
        connection.run(["true"])
        sockets = [path for path in Path(connection._dir).iterdir() if path.name.startswith("cm-")]
        assert len(sockets) == 1 and stat.S_ISSOCK(sockets[0].stat().st_mode)
        check = subprocess.run([*connection._base[:-1], "-O", "check", connection._base[-1]], capture_output=True, text=True)
        assert check.returncode == 0 and "Master running" in check.stderr


@pytest.mark.parametrize(
    ("stderr", "returncode", "kind", "advice"),
    [
        ("squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation", 1, TransientSchedulerError, None),
        ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)", 1, TransientSchedulerError, None),
        ("", 75, TransientSchedulerError, None),
        ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified", 1, PermanentSchedulerError, "check the allocation"),
        ("sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)", 1, PermanentSchedulerError, "exceeds a queue limit"),
        ("sbatch: error: invalid partition specified: gpu-z", 1, PermanentSchedulerError, "queue does not exist"),
    ],
)
def test_error_classification(stderr: str, returncode: int, kind: type, advice: str | None) -> None:
    error = scheduler_error("sbatch", subprocess.CompletedProcess([], returncode, "", stderr))
    assert isinstance(error, kind)
    if advice:
        assert advice in str(error)


@pytest.mark.usefixtures("prefect_server")
def test_saved_block_serves_the_cluster_resources_flow(sandbox: Sandbox) -> None:
    credentials(sandbox, private_key=SecretStr(sandbox.key.read_text())).save("ls6", overwrite=True)
    loaded = TaccCredentials.load("ls6")
    assert loaded.private_key.get_secret_value() == sandbox.key.read_text()
    queues = {queue.queue: queue for queue in cluster_resources("ls6")}
    assert set(queues) == {"gpu-a100", "gpu-a100-dev", "gpu-a100-small", "gpu-h100"}
    assert queues["gpu-a100"].nodes_total == 1


@pytest.mark.usefixtures("prefect_server")
def test_ssh_sessions_to_a_login_host_are_capped_by_a_global_concurrency_limit(sandbox: Sandbox) -> None:
    name = f"ssh-sessions-{sandbox.host}"
    with get_client(sync_client=True) as client:
        try:
            client.delete_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        slot = ssh_session_slot(sandbox.host)
        assert client.read_global_concurrency_limit_by_name(name).limit == 8, "created when missing"
        client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=2))
    clock = "import time; print(time.time())"
    command = ["bash", "-c", f"python3 -c {shlex.quote(clock)}; sleep 0.5; python3 -c {shlex.quote(clock)}"]
    try:
        with credentials(sandbox, private_key=SecretStr(sandbox.key.read_text())).get_client(session_slot=slot) as connection:
            with ThreadPoolExecutor(max_workers=6) as pool:
                outputs = list(pool.map(lambda _: connection.run(command).stdout.split(), range(6)))
    finally:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=8))
    spans = [(float(start), float(end)) for start, end in outputs]
    most_at_once = max(sum(1 for start, end in spans if start <= instant < end) for instant, _ in spans)
    assert most_at_once == 2, spans
