"""TaccCredentials: secrets stay secret, key material is private and short-lived, blocks load."""

from __future__ import annotations

import shlex
import stat
import subprocess
import sys
import tempfile
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
from tacc_jobs.exceptions import JobCapReached, PermanentSchedulerError, TransientSchedulerError
from tacc_jobs.processes import process_alive
from tacc_jobs.schedulers.slurm import scheduler_error
from tests.conftest import REPO, Sandbox, wait_until


def credentials(sandbox: Sandbox, **fields: object) -> TaccCredentials:
    return TaccCredentials(
        username=sandbox.user,
        host=sandbox.host,
        port=sandbox.port,
        known_hosts=sandbox.known_hosts.read_text().strip(),
        allocation=sandbox.account,
        scratch_root=f"/home/{sandbox.user}/scratch/orchestrator",
        **fields,
    )


def test_every_field_is_described() -> None:
    assert all(field.description for field in TaccCredentials.model_fields.values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "jdoe; rm -rf /"),
        ("host", "ls6 -oProxyCommand=x"),
        ("allocation", "A B"),
        ("scratch_root", "relative/path"),
        ("scratch_root", "/scratch/../etc"),
        ("scratch_root", "/scratch/$(id)"),
    ],
)
def test_fields_are_validated(field: str, value: str) -> None:
    with pytest.raises(ValidationError, match=field):
        TaccCredentials(**{"username": "jdoe", "host": "ls6.tacc.utexas.edu", field: value})


def key_material_on_disk(key_text: str) -> list[Path]:
    """Every file a connection wrote (its temporary directories) that holds the private key's text."""
    body = "".join(key_text.strip().splitlines()[1:-1])[:64]
    return [
        path
        for path in Path(tempfile.gettempdir()).glob("tacc-ssh-*/*")
        if path.is_file() and body in path.read_text(errors="ignore").replace("\n", "")
    ]


def test_a_private_key_never_touches_the_disk(sandbox: Sandbox) -> None:
    key_text = sandbox.key.read_text()
    block = credentials(sandbox, private_key=SecretStr(key_text))
    assert key_text not in repr(block) and key_text not in str(block.model_dump())
    connection = block.get_client()
    assert stat.S_IMODE(Path(connection._dir).stat().st_mode) == 0o700
    assert connection.run(["whoami"]).stdout.strip() == sandbox.user
    assert all(key_text.strip() not in part for part in connection._base)
    assert key_material_on_disk(key_text) == []
    agent = connection._agent
    connection.close()
    assert not Path(connection._dir).exists() and agent is not None and agent.poll() is not None


def test_no_key_is_left_behind_after_sigkill(sandbox: Sandbox) -> None:
    """Fault injection: the process holding a connection is killed with SIGKILL mid-use."""
    key_text = sandbox.key.read_text()
    code = (
        "import sys; from pathlib import Path; from pydantic import SecretStr; from tacc_jobs.ssh import SshConnection; "
        "c = SshConnection(host=sys.argv[1], port=int(sys.argv[2]), username=sys.argv[3], private_key=SecretStr(Path(sys.argv[4]).read_text()), "
        "known_hosts=Path(sys.argv[5]).read_text().strip()); c.run(['true']); print(c._dir, flush=True); "
        "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    )
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            sandbox.host,
            str(sandbox.port),
            sandbox.user,
            str(sandbox.key),
            str(sandbox.known_hosts),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert child.returncode == -9, child.stderr
    left = Path(child.stdout.strip())
    agent = int((left / "agent.pid").read_text())
    on_disk = key_material_on_disk(key_text)
    print(f"after SIGKILL: key files on disk={len(on_disk)}, directory left={left.exists()}")
    assert on_disk == []
    with credentials(
        sandbox, private_key_path=sandbox.key
    ).get_client():  # the next connection stops the orphaned agent
        assert not left.exists()
        wait_until(lambda: not process_alive(agent), timeout=10)


def test_commands_reuse_one_master_connection(sandbox: Sandbox) -> None:
    with credentials(sandbox, private_key_path=sandbox.key).get_client() as connection:
        connection.run(["true"])
        sockets = [path for path in Path(connection._dir).iterdir() if path.name.startswith("cm-")]
        assert len(sockets) == 1 and stat.S_ISSOCK(sockets[0].stat().st_mode)
        check = subprocess.run(
            [*connection._base[:-1], "-O", "check", connection._base[-1]], capture_output=True, text=True
        )
        assert check.returncode == 0 and "Master running" in check.stderr


@pytest.mark.parametrize(
    ("stderr", "returncode", "kind", "advice"),
    [
        (
            "squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation",
            1,
            TransientSchedulerError,
            None,
        ),
        (
            "sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
            1,
            TransientSchedulerError,
            None,
        ),
        ("", 75, TransientSchedulerError, None),
        (
            "sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
            1,
            PermanentSchedulerError,
            "check the allocation",
        ),
        (
            "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
            1,
            PermanentSchedulerError,
            "exceeds a queue limit",
        ),
        ("sbatch: error: invalid partition specified: gpu-z", 1, PermanentSchedulerError, "queue does not exist"),
        (
            "sbatch: error: QOSMaxSubmitJobPerUserLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
            1,
            JobCapReached,
            None,
        ),
        (
            "sbatch: error: QOSMaxWallDurationPerJobLimit\nsbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
            1,
            PermanentSchedulerError,
            "exceeds a queue limit",
        ),
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
        with credentials(sandbox, private_key=SecretStr(sandbox.key.read_text())).get_client(
            session_slot=slot
        ) as connection:
            with ThreadPoolExecutor(max_workers=6) as pool:
                outputs = list(pool.map(lambda _: connection.run(command).stdout.split(), range(6)))
    finally:
        with get_client(sync_client=True) as client:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(limit=8))
    spans = [(float(start), float(end)) for start, end in outputs]
    most_at_once = max(sum(1 for start, end in spans if start <= instant < end) for instant, _ in spans)
    assert most_at_once == 2, spans
