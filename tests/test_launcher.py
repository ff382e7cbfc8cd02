"""The packed-allocation launcher with real processes: locally, and as srun steps on the sandbox Slurm."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from itertools import combinations
from pathlib import Path

import pytest

from tacc_jobs.agents import AGENTS_DIR, agent_template
from tacc_jobs.launcher import (
    CANCEL_FILE,
    STATUS_FILE,
    Manifest,
    ManifestMember,
    MemberStatus,
    launcher_lines,
)
from tacc_jobs.models import parse_request
from tacc_jobs.schedulers import JobSubmission
from tacc_jobs.schedulers.job_script import (
    WRITE_PARAMS,
    AgentRuntime,
    JobPaths,
    job_environment,
)
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.schedulers.states import map_slurm_state
from tacc_jobs.ssh import SshConnection
from tests.conftest import Sandbox, wait_until

REPO = Path(__file__).resolve().parents[1]
RECORD_GPUS = 'echo "$CUDA_VISIBLE_DEVICES|$TACC_GPU_COUNT|$TACC_NODE" > seen\n'
"""A member's first line: what it was given, into `seen` in its work dir."""


def member(root: Path, index: int, body: str, gpus: int = 1) -> ManifestMember:
    """A member whose member.sh records its GPUs, then runs `body`."""
    work_dir = root / "jobs" / f"m{index}"
    work_dir.mkdir(parents=True)
    (work_dir / "member.sh").write_text(f"#!/bin/bash\n{RECORD_GPUS}{body}\n")
    return ManifestMember(
        name=f"tacc-{uuid.uuid4().hex}",
        gpus=gpus,
        work_dir=str(work_dir),
        script=str(work_dir / "member.sh"),
        runtime_seconds=60,
    )


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
    return subprocess.Popen(
        ["bash", str(allocation_dir / "batch.sh")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


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
    """Whether the process runs (a zombie, killed and not yet reaped by its new parent, does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


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
    assert elapsed < 8, "the pile runs side by side (serially it would take 12 s)"


def test_a_failing_member_leaves_the_others_completed(tmp_path: Path) -> None:
    members = [
        member(tmp_path, 0, "sleep 1"),
        member(tmp_path, 1, "echo broken >&2; exit 3", gpus=2),
        member(tmp_path, 2, "echo fine"),
    ]
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
    wait_until(lambda: (Path(running.work_dir) / "pid").exists() and status(running) and status(early), timeout=10)
    assert status(running).state == "RUNNING" and status(early).state == "CANCELLED"
    (Path(running.work_dir) / CANCEL_FILE).touch()
    cancelled_at = time.monotonic()
    wait_until(lambda: status(running).is_final, timeout=10, interval=0.05)
    assert time.monotonic() - cancelled_at < 5  # a poll (0.5 s) and SIGTERM; bash ends at once
    assert launcher.wait(timeout=5) == 0
    stopped = status(running)
    assert (stopped.state, stopped.exit_code, stopped.gpus) == ("CANCELLED", 143, [0])
    assert not alive(int((Path(running.work_dir) / "pid").read_text()))
    never = status(early)
    assert (never.gpus, never.gpu_seconds, never.node) == ([], 0, None)
    assert not (Path(early.work_dir) / "ran").exists() and not (Path(early.work_dir) / "seen").exists()


def test_restart_skips_ended_members_and_reruns_one_left_running(tmp_path: Path) -> None:
    ended, left_running, fresh = (member(tmp_path, index, "echo ran >> runs") for index in range(3))
    completed = {
        "state": "COMPLETED",
        "exit_code": 0,
        "node": "c001",
        "gpus": [0],
        "start": "2026-11-28T20:00:00+00:00",
        "end": "2026-11-28T20:01:00+00:00",
        "gpu_seconds": 60.0,
        "restart": 0,
    }
    for one, state in (
        (ended, completed),
        (
            left_running,
            {"state": "RUNNING", "node": "c001", "gpus": [1], "start": "2026-11-28T20:00:00+00:00", "restart": 0},
        ),
    ):
        (Path(one.work_dir) / "output").mkdir()
        (Path(one.work_dir) / STATUS_FILE).write_text(json.dumps(state))
    run_pile(allocation(tmp_path, [ended, left_running, fresh]), restart=1)
    assert status(ended) == MemberStatus.model_validate(completed) and not (Path(ended.work_dir) / "runs").exists()
    for one in (left_running, fresh):
        assert (status(one).state, status(one).restart) == ("COMPLETED", 1)
        assert (Path(one.work_dir) / "runs").read_text() == "ran\n"


def test_a_member_s_leftover_processes_are_killed_before_its_gpu_is_given_again(tmp_path: Path) -> None:
    # m0's shell ends on SIGTERM; its child ignores SIGTERM and would hold GPU 0 under m1
    child = (
        "python3 -c 'import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        'open("child", "w").write(str(os.getpid())); time.sleep(60)\''
    )
    first, second = member(tmp_path, 0, child), member(tmp_path, 1, "touch ran")
    launcher = start_launcher(allocation(tmp_path, [first, second], gpus_per_node=1))
    wait_until(lambda: (Path(first.work_dir) / "child").exists(), timeout=10)
    (Path(first.work_dir) / CANCEL_FILE).touch()
    assert launcher.wait(timeout=20) == 0
    assert (status(first).state, status(second).state) == ("CANCELLED", "COMPLETED")
    assert not alive(int((Path(first.work_dir) / "child").read_text()))
    assert status(second).start >= status(first).end


def test_sigterm_stops_the_members_and_leaves_them_to_run_again_after_a_requeue(tmp_path: Path) -> None:
    # SIGTERM is a requeue, a cancel of the whole allocation or the wall time: the members are
    # stopped, not ended; the allocation's end decides theirs, and a restart runs them again
    members = [
        member(tmp_path, index, "echo ran >> runs; [[ -e second ]] && exit 0; touch second; echo $$ > pid; sleep 30")
        for index in range(2)
    ]
    allocation_dir = allocation(tmp_path, members, gpus_per_node=2)
    launcher = start_launcher(allocation_dir)
    wait_until(lambda: all((Path(one.work_dir) / "pid").exists() for one in members), timeout=10)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=10)
    assert launcher.returncode == 0, output
    for one in members:
        assert status(one).state == "RUNNING" and not alive(int((Path(one.work_dir) / "pid").read_text()))
    run_pile(allocation_dir, restart=1)
    for one in members:
        assert (status(one).state, status(one).restart) == ("COMPLETED", 1)
        assert (Path(one.work_dir) / "runs").read_text() == "ran\nran\n"


def test_a_step_killed_just_before_the_launcher_hears_of_the_requeue_is_left_to_run_again(tmp_path: Path) -> None:
    # Slurm signals the steps and the batch step independently: m0 dies of SIGTERM a second before
    # the launcher's own SIGTERM (a requeue) and must not be recorded FAILED; m1, killed with no
    # end of the allocation following, is a real failure once the settle has passed
    members = [member(tmp_path, index, "echo $$ > pid; sleep 30") for index in range(2)]
    launcher = start_launcher(allocation(tmp_path, members, gpus_per_node=2))
    wait_until(lambda: all((Path(one.work_dir) / "pid").exists() for one in members), timeout=10)
    os.kill(int((Path(members[1].work_dir) / "pid").read_text()), signal.SIGTERM)
    failed = wait_until(lambda: (ended := status(members[1])) and ended.is_final and ended, timeout=10)
    assert (failed.state, failed.exit_code) == ("FAILED", 143)
    os.kill(int((Path(members[0].work_dir) / "pid").read_text()), signal.SIGTERM)
    time.sleep(1)
    launcher.send_signal(signal.SIGTERM)
    output, _ = launcher.communicate(timeout=10)
    assert launcher.returncode == 0, output
    assert status(members[0]).state == "RUNNING", output
    assert (failed.end - failed.start).total_seconds() < 2, "its end is when it died, not when the settle passed"


def test_a_member_that_cannot_start_fails_alone(tmp_path: Path) -> None:
    gone, fine = member(tmp_path, 0, "true"), member(tmp_path, 1, "true")
    Path(gone.work_dir).rename(tmp_path / "elsewhere")  # its work dir vanished before it started: no log to open
    output = run_pile(allocation(tmp_path, [gone, fine], gpus_per_node=1))
    assert f"{gone.name} could not start" in output
    assert (status(gone).state, status(gone).gpu_seconds, status(fine).state) == ("FAILED", 0, "COMPLETED")


@pytest.mark.faults  # mounts a full tmpfs (root)
def test_a_status_that_cannot_be_written_keeps_the_members_gpus_until_it_ends(tmp_path: Path) -> None:
    """A full disk when the launcher writes a member's RUNNING status: the member runs on, and its
    GPU is not given to the next member until it has ended."""
    full = tmp_path / "full"
    full.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(full)], check=True)
    try:
        ended = tmp_path / "first-ended"
        first = member(full, 0, f"sleep 2; date +%s.%N > {ended}")
        subprocess.run(["dd", "if=/dev/zero", f"of={full / 'filler'}", "bs=4k"], capture_output=True)  # until ENOSPC
        second = member(tmp_path, 1, "true")
        output = run_pile(allocation(tmp_path, [first, second], gpus_per_node=1))
        assert f"{first.name} status not written" in output, output
        assert status(second).state == "COMPLETED"
        assert status(second).start.timestamp() >= float(ended.read_text()) - 0.05, "one GPU, one member at a time"
        assert not [path for path in (Path(first.work_dir) / "output").glob("*.tmp")], "no partial file left"
    finally:
        subprocess.run(["umount", "--lazy", str(full)], check=True)  # lazy: a member left running keeps it busy


def test_the_wall_time_warning_records_timeout_and_stops_every_member(tmp_path: Path) -> None:
    # USR1 (sbatch --signal=B:USR1@N); m1 ignores SIGTERM (killed after the grace); m2 waits for a GPU and never starts
    members = [
        member(tmp_path, 0, "echo $$ > pid; sleep 30"),
        member(tmp_path, 1, "echo $$ > pid; trap '' TERM; while true; do sleep 0.2; done"),
        member(tmp_path, 2, "touch ran"),
    ]
    launcher = start_launcher(allocation(tmp_path, members, gpus_per_node=2))
    wait_until(lambda: all((Path(one.work_dir) / "pid").exists() for one in members[:2]), timeout=10)
    time.sleep(1)
    launcher.send_signal(signal.SIGUSR1)
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


def alphacal_member(root: Path, index: int, gpus: int) -> ManifestMember:
    """An AlphaCal member.sh as the orchestrator renders one: the job's exports, its params, the agent's body."""
    job_id = uuid.uuid4()
    paths = JobPaths.for_work_dir(str(root / "jobs" / job_id.hex), str(REPO / "datasets" / "VLASS2.1.eb123456"))
    request = parse_request(
        {
            "agent": "AlphaCal",
            "dataset_id": "VLASS2.1.eb123456",
            "gpu_count": gpus,
            "max_runtime": "00:05:00",
            "user_id": "jdoe",
            "params": {"step_seconds": 0.3},
        }
    )
    environment = job_environment(
        job_id, request, paths, AgentRuntime(python=sys.executable, agent_home=str(AGENTS_DIR))
    )
    exports = (f"export {name}={shlex.quote(value)}" for name, value in environment.items())
    Path(paths.work_dir).mkdir(parents=True)
    Path(paths.work_dir, "member.sh").write_text(
        "\n".join(["#!/bin/bash", *exports, WRITE_PARAMS, agent_template("AlphaCal")])
    )
    return ManifestMember(
        name=f"tacc-{job_id.hex}",
        gpus=gpus,
        work_dir=paths.work_dir,
        script=f"{paths.work_dir}/member.sh",
        runtime_seconds=300,
    )


def test_alphacal_members_see_their_own_gpus(tmp_path: Path) -> None:
    members = [alphacal_member(tmp_path, 0, 2), alphacal_member(tmp_path, 1, 1), alphacal_member(tmp_path, 2, 1)]
    run_pile(allocation(tmp_path, members))
    results = [json.loads(Path(one.work_dir, "output", "result.json").read_text()) for one in members]
    assert [(result["visible_gpus"], result["node"]) for result in results] == [
        (["0", "1"], socket.gethostname()),
        (["2"], socket.gethostname()),
        (["3"], socket.gethostname()),
    ]
    assert [status(one).state for one in members] == ["COMPLETED"] * 3


def test_alphacal_refuses_gpus_that_do_not_match_its_count(tmp_path: Path) -> None:
    one = alphacal_member(tmp_path, 0, 2)
    environment = {
        name: value for name, value in os.environ.items() if name not in ("CUDA_VISIBLE_DEVICES", "TACC_GPU_COUNT")
    }
    for devices in ("0", "1,1", None):
        given = {"TACC_GPU_COUNT": "2", **({"CUDA_VISIBLE_DEVICES": devices} if devices is not None else {})}
        refused = subprocess.run(
            ["bash", one.script], cwd=one.work_dir, env={**environment, **given}, capture_output=True, text=True
        )
        assert (
            refused.returncode == 3
            and "alphacal: wrong GPUs: TACC_GPU_COUNT=2 but CUDA_VISIBLE_DEVICES=" in refused.stderr
        )
        assert not Path(one.work_dir, "output", "result.json").exists()
    alone = subprocess.run(["bash", one.script], cwd=one.work_dir, env=environment, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    assert json.loads(Path(one.work_dir, "output", "result.json").read_text())["visible_gpus"] is None


class SlurmAllocation:
    """A packed allocation submitted to the sandbox as its test user, as the orchestrator submits one."""

    def __init__(
        self, sandbox: Sandbox, connection: SshConnection, bodies: list[str], cpus_per_task: str = "1"
    ) -> None:
        root = Path(f"/home/{sandbox.user}/scratch/launcher-{uuid.uuid4().hex[:8]}")
        self.members = [member(root, index, body) for index, body in enumerate(bodies)]
        self.dir = allocation(root, self.members, placement="srun")
        subprocess.run(["chown", "-R", f"{sandbox.user}:{sandbox.user}", str(root)], check=True)
        self.name = f"tacc-{uuid.uuid4().hex}"
        self.slurm = SlurmScheduler(connection, "stampede3", str(root))
        self.job_id = self.slurm.submit(
            JobSubmission(
                name=self.name,
                script=(self.dir / "batch.sh").read_text(),
                work_dir=str(self.dir),
                stdout_path=str(self.dir / "stdout.log"),
                stderr_path=str(self.dir / "stderr.log"),
                sbatch_args=[
                    "-p",
                    "h100",
                    "-N",
                    "1",
                    "--ntasks-per-node",
                    "1",
                    "--cpus-per-task",
                    cpus_per_task,
                    "-t",
                    "00:02:00",
                ],
            )
        )

    def wait_end(self) -> None:
        """Wait for the allocation's end: COMPLETED, as the launcher exits 0."""

        def ended():
            state = self.slurm.states({self.job_id: self.name}).get(self.job_id)
            return state if state and map_slurm_state(state.state, state.exit_code)[0].is_terminal else None

        final = wait_until(ended, timeout=90, interval=1)
        assert final.state == "COMPLETED", (self.dir / "stdout.log").read_text() + (self.dir / "stderr.log").read_text()

    def steps(self, count: int) -> dict[str, str]:
        """Step name -> state, from accounting, once it holds `count` steps."""

        def found():
            rows = subprocess.run(
                ["sacct", "-j", self.job_id, "--noheader", "--parsable2", "--format=JobID,JobName,State"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.splitlines()
            steps = {
                name: state
                for job_id, name, state in (row.split("|") for row in rows)
                if "." in job_id and name != "batch"
            }
            return steps if len(steps) >= count else None

        return wait_until(found, timeout=30, interval=1)


@pytest.mark.parametrize("cpus_per_task", ["1", "8"])
def test_srun_steps_on_the_sandbox_slurm(
    sandbox: Sandbox, sandbox_connection: SshConnection, cpus_per_task: str
) -> None:
    """A real packed allocation on the sandbox: one srun step per member, named by the member;
    concurrent members on disjoint GPUs; a cancelled member's step stopped. With one CPU (the
    planner's sbatch options on a node that is not whole) the steps share it (--overlap); with
    eight (a whole node at TACC has them all), each 1-GPU member gets 2 of its own (--exclusive)."""
    bodies = [f"echo $SLURM_CPUS_PER_TASK > cpus; sleep {seconds}" for seconds in [1, 3, 1, 3, 2, 2, 60]]
    packed = SlurmAllocation(sandbox, sandbox_connection, bodies, cpus_per_task)
    *members, doomed = packed.members
    wait_until(lambda: status(doomed) and status(doomed).state == "RUNNING", timeout=90)
    (Path(doomed.work_dir) / CANCEL_FILE).touch()
    packed.wait_end()
    statuses = [status(one) for one in members]
    assert [one.state for one in statuses] == ["COMPLETED"] * 6
    node = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    for one, state in zip(members, statuses):
        assert seen(one) == (state.gpus, 1, node) and state.node == node
        assert Path(one.work_dir, "cpus").read_text() == ("2\n" if cpus_per_task == "8" else "1\n")
    for a, b in combinations(statuses, 2):
        assert not (overlap(a, b) and set(a.gpus) & set(b.gpus)), (a, b)
    assert max_concurrency(statuses) == 4
    cancelled = status(doomed)
    assert cancelled.state == "CANCELLED" and (cancelled.end - cancelled.start).total_seconds() < 30
    found = packed.steps(7)
    assert {found[one.name] for one in members} == {"COMPLETED"}
    assert found[doomed.name].startswith("CANCELLED"), found


def test_allocation_ending_on_slurm_stops_the_steps_as_timeout(
    sandbox: Sandbox, sandbox_connection: SshConnection
) -> None:
    """`--signal=B:USR1@...` reaches the launcher (the batch shell it replaced): its steps stop, TIMEOUT."""
    packed = SlurmAllocation(sandbox, sandbox_connection, ["sleep 60"] * 5)
    wait_until(lambda: all(status(one) for one in packed.members[:4]), timeout=90)
    time.sleep(1)
    subprocess.run(["scancel", "--batch", "--signal=USR1", packed.job_id], check=True)
    packed.wait_end()
    for one in packed.members[:4]:
        ended = status(one)
        assert ended.state == "TIMEOUT" and 1 <= ended.gpu_seconds < 30, ended
    assert status(packed.members[4]) is None
    assert all(state.startswith("CANCELLED") for state in packed.steps(4).values())
