"""The packed-allocation launcher with real processes: locally, and as srun steps on the sandbox Slurm."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import uuid
from itertools import combinations
from pathlib import Path

import pytest

from tacc_jobs.launcher import (
    CANCEL_FILE,
    STATUS_FILE,
    Manifest,
    ManifestMember,
    MemberStatus,
    launcher_lines,
)
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.schedulers.states import map_slurm_state
from tacc_jobs.ssh import SshConnection
from tests.conftest import Sandbox, wait_until

RECORD_GPUS = 'echo "$CUDA_VISIBLE_DEVICES|$TACC_GPU_COUNT|$TACC_NODE" > seen\n'
"""A member's first line: what it was given, into `seen` in its work dir."""


def member(root: Path, index: int, body: str, gpus: int = 1) -> ManifestMember:
    """A member whose member.sh records its GPUs, then runs `body`."""
    work_dir = root / "jobs" / f"m{index}"
    work_dir.mkdir(parents=True)
    (work_dir / "member.sh").write_text(f"#!/bin/bash\n{RECORD_GPUS}{body}\n")
    return ManifestMember(name=f"tacc-{uuid.uuid4().hex}", gpus=gpus, work_dir=str(work_dir),
                          script=str(work_dir / "member.sh"), runtime_seconds=60)


def allocation(root: Path, members: list[ManifestMember], gpus_per_node: int = 4, placement: str = "local") -> Path:
    """The allocation dir: manifest.json and a batch script built from launcher_lines()."""
    allocation_dir = root / "allocations" / "a1"
    allocation_dir.mkdir(parents=True)
    manifest = Manifest(placement=placement, gpus_per_node=gpus_per_node, members=members)
    (allocation_dir / "manifest.json").write_text(manifest.model_dump_json())
    (allocation_dir / "batch.sh").write_text("\n".join(["#!/bin/bash", *launcher_lines(str(allocation_dir))]) + "\n")
    return allocation_dir


def start_launcher(allocation_dir: Path, restart: int = 0) -> subprocess.Popen:
    env = dict(os.environ, SLURM_RESTART_COUNT=str(restart))
    return subprocess.Popen(["bash", str(allocation_dir / "batch.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_pile(allocation_dir: Path, restart: int = 0, timeout: float = 60) -> str:
    """Run the launcher to its end; its output (it must exit 0)."""
    launcher = start_launcher(allocation_dir, restart)
    output, _ = launcher.communicate(timeout=timeout)
    assert launcher.returncode == 0, output
    return output


def status(one: ManifestMember) -> MemberStatus | None:
    path = Path(one.work_dir) / STATUS_FILE
    return MemberStatus.model_validate_json(path.read_text()) if path.exists() else None


def seen(one: ManifestMember) -> tuple[list[int], int, str]:
    """The GPU ids, GPU count and node the member's script was given."""
    devices, count, node = (Path(one.work_dir) / "seen").read_text().strip().split("|")
    return [int(gpu) for gpu in devices.split(",")], int(count), node


def overlap(a: MemberStatus, b: MemberStatus) -> bool:
    return a.start < b.end and b.start < a.end


def max_concurrency(statuses: list[MemberStatus]) -> int:
    """The most members running at one moment."""
    return max(sum(1 for other in statuses if other.start <= one.start < other.end) for one in statuses)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pile_reuses_gpus_of_members_that_end_early(tmp_path: Path) -> None:
    # 4 GPUs, 6 members: the two short ones (m0, m2) end first and m4, m5 take their GPUs
    members = [member(tmp_path, index, f"sleep {seconds}") for index, seconds in enumerate([1, 3, 1, 3, 2, 2])]
    began = time.monotonic()
    run_pile(allocation(tmp_path, members))
    elapsed = time.monotonic() - began
    statuses = [status(one) for one in members]
    assert [one.state for one in statuses] == ["COMPLETED"] * 6 and {one.exit_code for one in statuses} == {0}
    for one, state in zip(members, statuses):
        assert seen(one) == (state.gpus, 1, socket.gethostname()) and state.node == socket.gethostname()
        assert state.gpu_seconds == pytest.approx((state.end - state.start).total_seconds(), abs=0.01)
    for a, b in combinations(statuses, 2):
        assert not (overlap(a, b) and set(a.gpus) & set(b.gpus)), (a, b)
    assert max_concurrency(statuses) == 4
    assert [one.gpus for one in statuses[:4]] == [[0], [1], [2], [3]]
    assert sorted([statuses[4].gpus, statuses[5].gpus]) == [[0], [2]]
    assert min(statuses[4].start, statuses[5].start) >= min(statuses[0].end, statuses[2].end)
    assert elapsed < 6, "the pile runs side by side (serially it would take 12 s)"


def test_a_failing_member_leaves_the_others_completed(tmp_path: Path) -> None:
    members = [member(tmp_path, 0, "sleep 1"), member(tmp_path, 1, "echo broken >&2; exit 3", gpus=2), member(tmp_path, 2, "echo fine")]
    run_pile(allocation(tmp_path, members))
    states = [(one.state, one.exit_code) for one in map(status, members)]
    assert states == [("COMPLETED", 0), ("FAILED", 3), ("COMPLETED", 0)]
    assert seen(members[1]) == ([1, 2], 2, socket.gethostname())
    assert (Path(members[1].work_dir) / "stderr.log").read_text() == "broken\n"
    assert (Path(members[2].work_dir) / "stdout.log").read_text() == "fine\n"


def test_cancel_marker_stops_a_member_and_one_cancelled_before_it_starts_never_runs(tmp_path: Path) -> None:
    running = member(tmp_path, 0, "echo $$ > pid; sleep 30")
    early = member(tmp_path, 1, "touch ran")
    (Path(early.work_dir) / CANCEL_FILE).touch()
    launcher = start_launcher(allocation(tmp_path, [running, early]))
    wait_until(lambda: (Path(running.work_dir) / "pid").exists(), timeout=10)
    assert status(running).state == "RUNNING" and status(early).state == "CANCELLED"
    (Path(running.work_dir) / CANCEL_FILE).touch()
    cancelled_at = time.monotonic()
    wait_until(lambda: status(running).is_final, timeout=5, interval=0.05)
    assert time.monotonic() - cancelled_at < 2
    assert launcher.wait(timeout=5) == 0
    stopped = status(running)
    assert (stopped.state, stopped.exit_code, stopped.gpus) == ("CANCELLED", 143, [0])
    assert not alive(int((Path(running.work_dir) / "pid").read_text()))
    never = status(early)
    assert (never.gpus, never.gpu_seconds, never.node) == ([], 0, None)
    assert not (Path(early.work_dir) / "ran").exists() and not (Path(early.work_dir) / "seen").exists()


def test_restart_skips_ended_members_and_reruns_one_left_running(tmp_path: Path) -> None:
    ended, left_running, fresh = (member(tmp_path, index, "echo ran >> runs") for index in range(3))
    completed = {"state": "COMPLETED", "exit_code": 0, "node": "c001", "gpus": [0], "start": "2026-11-28T20:00:00+00:00",
                 "end": "2026-11-28T20:01:00+00:00", "gpu_seconds": 60.0, "restart": 0}
    for one, state in ((ended, completed), (left_running, {"state": "RUNNING", "node": "c001", "gpus": [1],
                                                            "start": "2026-11-28T20:00:00+00:00", "restart": 0})):
        (Path(one.work_dir) / "output").mkdir()
        (Path(one.work_dir) / STATUS_FILE).write_text(json.dumps(state))
    run_pile(allocation(tmp_path, [ended, left_running, fresh]), restart=1)
    assert status(ended) == MemberStatus.model_validate(completed) and not (Path(ended.work_dir) / "runs").exists()
    for one in (left_running, fresh):
        assert (status(one).state, status(one).restart) == ("COMPLETED", 1)
        assert (Path(one.work_dir) / "runs").read_text() == "ran\n"


def test_allocation_ending_records_timeout_and_stops_every_member(tmp_path: Path) -> None:
    # m1 ignores SIGTERM (killed after the grace); m2 waits for a GPU and never starts
    members = [member(tmp_path, 0, "echo $$ > pid; sleep 30"),
               member(tmp_path, 1, "echo $$ > pid; trap '' TERM; while true; do sleep 0.2; done"),
               member(tmp_path, 2, "touch ran")]
    launcher = start_launcher(allocation(tmp_path, members, gpus_per_node=2))
    wait_until(lambda: all((Path(one.work_dir) / "pid").exists() for one in members[:2]), timeout=10)
    time.sleep(1)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=10)
    assert launcher.returncode == 0, output
    for one in members[:2]:
        ended = status(one)
        assert ended.state == "TIMEOUT" and ended.exit_code in (143, 137)
        assert 1 <= ended.gpu_seconds == pytest.approx((ended.end - ended.start).total_seconds(), abs=0.01)
        assert not alive(int((Path(one.work_dir) / "pid").read_text()))
    assert status(members[2]) is None and not (Path(members[2].work_dir) / "ran").exists()


def test_a_manifest_member_larger_than_a_node_is_refused(tmp_path: Path) -> None:
    too_big = member(tmp_path, 0, "true", gpus=2)
    with pytest.raises(ValueError, match="never span nodes"):
        Manifest(placement="local", gpus_per_node=1, members=[too_big])
    allocation_dir = allocation(tmp_path, [too_big], gpus_per_node=2)
    manifest = json.loads((allocation_dir / "manifest.json").read_text())
    (allocation_dir / "manifest.json").write_text(json.dumps({**manifest, "gpus_per_node": 1}))
    refused = subprocess.run(["bash", str(allocation_dir / "batch.sh")], capture_output=True, text=True, timeout=10)
    assert refused.returncode == 2 and "do not fit on a node of 1 GPUs" in refused.stderr


@pytest.mark.parametrize("tasks_per_node", ["1", "4"])
def test_srun_steps_on_the_sandbox_slurm(sandbox: Sandbox, sandbox_connection: SshConnection, tasks_per_node: str) -> None:
    """A real packed allocation on the sandbox: one srun step per member, named by the member;
    concurrent members on disjoint GPUs; a cancelled member's step stopped. With one task per
    node (the planner's sbatch options) the steps share the allocation's CPU (--overlap); with
    four, each gets its own (--exclusive --cpus-per-task)."""
    root = Path(f"/home/{sandbox.user}/scratch/launcher-{uuid.uuid4().hex[:8]}")
    members = [member(root, index, f"sleep {seconds}") for index, seconds in enumerate([1, 3, 1, 3, 2, 2])]
    doomed = member(root, 6, "sleep 60")
    allocation_dir = allocation(root, [*members, doomed], placement="srun")
    subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(root)], check=True)
    name = f"tacc-{uuid.uuid4().hex}"
    slurm = SlurmScheduler(sandbox_connection, "stampede3", str(root))
    job_id = slurm.submit(JobSubmission(
        name=name, script=(allocation_dir / "batch.sh").read_text(), work_dir=str(allocation_dir),
        stdout_path=str(allocation_dir / "stdout.log"), stderr_path=str(allocation_dir / "stderr.log"),
        sbatch_args=["-p", "h100", "-N", "1", "--ntasks-per-node", tasks_per_node, "-t", "00:02:00"]))
    wait_until(lambda: status(doomed) and status(doomed).state == "RUNNING", timeout=90)
    (Path(doomed.work_dir) / CANCEL_FILE).touch()

    def ended():
        state = slurm.states({job_id: name}).get(job_id)
        return state if state and map_slurm_state(state.state, state.exit_code)[0].is_terminal else None

    final = wait_until(ended, timeout=90, interval=1)
    log = (allocation_dir / "stdout.log").read_text() + (allocation_dir / "stderr.log").read_text()
    assert final.state == "COMPLETED", log
    statuses = [status(one) for one in members]
    assert [one.state for one in statuses] == ["COMPLETED"] * 6, log
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    for one, state in zip(members, statuses):
        assert seen(one) == (state.gpus, 1, node) and state.node == node
    for a, b in combinations(statuses, 2):
        assert not (overlap(a, b) and set(a.gpus) & set(b.gpus)), (a, b)
    assert max_concurrency(statuses) == 4
    cancelled = status(doomed)
    assert cancelled.state == "CANCELLED" and (cancelled.end - cancelled.start).total_seconds() < 30

    def steps():
        rows = subprocess.run(["sacct", "-j", job_id, "--noheader", "--parsable2", "--format=JobID,JobName,State"],
                              capture_output=True, text=True, check=True).stdout.split()
        found = {row.split("|")[1]: row.split("|")[2] for row in rows if "." in row.split("|")[0]}
        return found if len(found) >= 7 else None

    found = wait_until(steps, timeout=30, interval=1)
    assert {found[one.name] for one in members} == {"COMPLETED"}
    assert found[doomed.name].startswith("CANCELLED"), found
