"""Staging over SSH to the sandbox's scratch: rsync through the multiplexed connection."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from tacc_jobs.ssh import SshConnection
from tacc_jobs.staging.datasets import inspect_dataset, stage
from tacc_jobs.staging.transfer import MANIFEST_NAME, RsyncOverSsh
from tests.conftest import Sandbox, wait_until


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    (root / "VLASS2.1.eb42" / "sub").mkdir(parents=True)
    (root / "VLASS2.1.eb42" / "chunk-000.csv").write_text("channel,real,imag\n1,1,1\n")
    (root / "VLASS2.1.eb42" / "sub" / "notes.txt").write_text("observing log\n")
    return root


@pytest.fixture
def destination(sandbox: Sandbox) -> str:
    return f"/home/{sandbox.user}/scratch/stage-{uuid.uuid4().hex[:8]}/datasets/VLASS2.1.eb42"


def test_stage_restage_and_repair_over_ssh(sandbox_connection: SshConnection, dataset: Path, destination: str) -> None:
    rsync = RsyncOverSsh(sandbox_connection)
    fractions: list[float] = []
    first = stage(inspect_dataset(dataset, "VLASS2.1.eb42"), rsync, destination, fractions.append)
    assert first.copied and first.transfer.files_transferred == 2 and fractions and fractions[-1] == 1.0
    assert Path(destination, "sub", "notes.txt").read_text() == "observing log\n"
    assert Path(destination, MANIFEST_NAME).exists()
    assert Path(destination, "chunk-000.csv").stat().st_uid != 0, "files belong to the remote user"
    before = sandbox_connection.commands_run
    again = stage(inspect_dataset(dataset, "VLASS2.1.eb42"), rsync, destination)
    assert not again.copied and again.transfer is None
    assert sandbox_connection.commands_run - before == 2, "checksums and manifest, nothing else"
    Path(destination, "chunk-000.csv").write_text("corrupted in scratch")
    repaired = stage(inspect_dataset(dataset, "VLASS2.1.eb42"), rsync, destination)
    assert repaired.repaired == ["chunk-000.csv"] and repaired.transfer.files_transferred == 1
    assert Path(destination, "chunk-000.csv").read_text() == "channel,real,imag\n1,1,1\n"


def rsync_pids(marker: str) -> list[int]:
    listing = subprocess.run(["pgrep", "-f", f"^rsync .*{marker}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in listing.split()]


def test_interrupted_transfer_resumes_from_the_partial_file(
    sandbox_connection: SshConnection, dataset: Path, destination: str
) -> None:
    big = dataset / "VLASS2.1.eb42" / "cube.bin"
    big.write_bytes(os.urandom(24 << 20))
    inventory = inspect_dataset(dataset, "VLASS2.1.eb42")
    slow = RsyncOverSsh(sandbox_connection, bandwidth_limit_kbps=3000)
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            stage(inventory, slow, destination)
        except BaseException as error:  # noqa: BLE001 - inspected below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    wait_until(lambda: rsync_pids(str(dataset)), timeout=20)
    time.sleep(3)
    for pid in rsync_pids(str(dataset)):
        os.kill(pid, signal.SIGTERM)
    thread.join(30)
    assert "error" in outcome, "the interrupted transfer must fail"
    partial = Path(destination, "cube.bin")
    assert partial.exists() and 0 < partial.stat().st_size < big.stat().st_size, "rsync --partial kept what arrived"
    assert not Path(destination, MANIFEST_NAME).exists(), "an interrupted staging is not a staged dataset"
    kept = partial.stat().st_size
    resumed = stage(inspect_dataset(dataset, "VLASS2.1.eb42"), RsyncOverSsh(sandbox_connection), destination)
    assert resumed.copied and resumed.transfer.bytes_transferred <= big.stat().st_size - kept + (1 << 20)
    assert Path(destination, "cube.bin").read_bytes() == big.read_bytes()
