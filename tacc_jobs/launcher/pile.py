"""Run a packed allocation's members as a work pile over its nodes' GPUs.

    python3 launcher.py <allocation dir>/manifest.json

Each member starts as soon as one node of the allocation has as many free GPUs as it asks
for, pinned to them with `CUDA_VISIBLE_DEVICES` (and `TACC_GPU_COUNT`, `TACC_NODE`), as TACC's
launcher does; its GPUs are free again when it ends. Placement "srun" runs each member as an
srun step on its node; "local" runs it as a process group on this host. Each member's
`output/status.json` says how it is doing (written atomically). A member whose `cancel`
marker appears is stopped (CANCELLED); a member that already ended in an earlier attempt of a
requeued allocation is skipped. SIGUSR1 (`--signal=B:USR1@<seconds>`: the wall time is near)
stops the running members and records TIMEOUT. SIGTERM (a requeue, a cancel of the whole
allocation, a preemption, the wall time reached) stops them and leaves their status RUNNING:
the allocation's own end decides theirs, and a requeued allocation runs them again. A member's
leftover processes are killed with it, so its GPUs are free when they are given again. A member
killed by a signal is recorded FAILED only if no end of the allocation follows within
`SIGNALLED_SETTLE_SECONDS`: Slurm signals the allocation's steps and its batch step
independently (a requeue, a cancel), so a step may die before the launcher hears why. Exits 0
once the pile is done, whatever the members' results.

Standard library only, Python >= 3.8, no import from the project: the batch script embeds it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

STATUS_FILE = "output/status.json"
"""The member's status, relative to its work dir."""
CANCEL_FILE = "cancel"
"""The marker the orchestrator creates in a member's work dir to cancel it."""
FINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT")
POLL_SECONDS = 0.5
STOP_GRACE_SECONDS = 2.0
"""How long a stopped member has between SIGTERM and SIGKILL."""
SIGNALLED_SETTLE_SECONDS = 3.0
"""How long a member killed by a signal waits for the allocation's own end before it is FAILED."""


def utc_iso(moment: float) -> str:
    """A Unix time as ISO-8601 UTC.

    Example:
        >>> utc_iso(0)
        '1970-01-01T00:00:00.000+00:00'
    """
    return datetime.fromtimestamp(moment, timezone.utc).isoformat(timespec="milliseconds")


def write_json_atomically(path: str, data: dict) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half of it.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "output", "status.json")
        >>> write_json_atomically(path, {"state": "RUNNING"})
        >>> read_status(os.path.dirname(os.path.dirname(path)))
        {'state': 'RUNNING'}
    """
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.{os.getpid()}.tmp"
    try:
        with open(partial, "w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())  # the rename never outlives the data (a node crash on Lustre or ext4)
        os.replace(partial, path)
    except OSError:
        if os.path.exists(partial):
            os.remove(partial)  # what a full disk let through, no more
        raise


def read_status(work_dir: str) -> dict | None:
    """A member's status.json, or None when there is none; one that exists but cannot be read
    or is not a JSON object is logged and counts as none (the member runs).

    Example:
        >>> read_status("/nonexistent") is None
        True
    """
    path = os.path.join(work_dir, STATUS_FILE)
    try:
        with open(path) as handle:
            status = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log(f"{path}: unreadable ({error}); taken as no status")
        return None
    if not isinstance(status, dict):
        log(f"{path}: not a JSON object; taken as no status")
        return None
    return status


def exit_code_of(returncode: int) -> int:
    """A process's return code in the shell's words: killed by signal N is 128 + N.

    Example:
        >>> exit_code_of(-15), exit_code_of(3)
        (143, 3)
    """
    return 128 - returncode if returncode < 0 else returncode


def allocation_nodes(placement: str) -> list[str]:
    """The nodes members run on: the allocation's (srun), or this host (local).

    Example:
        >>> allocation_nodes("local") == [socket.gethostname()]
        True
    """
    if placement == "local":
        return [socket.gethostname()]
    names = subprocess.run(
        ["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    ).stdout
    return names.split()


def member_argv(placement: str, member: dict, node: str, gpus_per_node: int, cpus_on_node: int) -> list[str]:
    """The command that runs one member on its node.

    An srun step asks for the member's share of the node's CPUs (`SLURM_CPUS_ON_NODE` x its
    GPUs / GPUs per node), so steps never wait for each other's CPUs; an allocation holding
    fewer CPUs than GPUs per node lets the steps share them (`--overlap`) instead.

    Example:
        >>> member = {"name": "tacc-1", "gpus": 1, "script": "/j/member.sh"}
        >>> member_argv("local", member, "c001", 4, 0)
        ['bash', '/j/member.sh']
        >>> " ".join(member_argv("srun", member, "c001", 4, 96))
        'srun --exclusive --cpus-per-task=24 -N1 -n1 -w c001 --job-name tacc-1 --export=ALL bash /j/member.sh'
        >>> member_argv("srun", member, "c001", 4, 1)[:2]
        ['srun', '--overlap']
    """
    command = ["bash", member["script"]]
    if placement == "local":
        return command
    cpus = cpus_on_node * member["gpus"] // gpus_per_node
    sharing = ["--exclusive", f"--cpus-per-task={cpus}"] if cpus >= 1 else ["--overlap"]
    return ["srun", *sharing, "-N1", "-n1", "-w", node, "--job-name", member["name"], "--export=ALL", *command]


def take_gpus(free: dict[str, list[int]], count: int) -> tuple[str, list[int]] | None:
    """The first node with `count` free GPUs, and the lowest of them, taken from `free`.

    Example:
        >>> free = {"c001": [3], "c002": [0, 1, 2, 3]}
        >>> take_gpus(free, 2), free
        (('c002', [0, 1]), {'c001': [3], 'c002': [2, 3]})
        >>> take_gpus(free, 3) is None
        True
    """
    for node, ids in free.items():
        if len(ids) >= count:
            taken, free[node] = ids[:count], ids[count:]
            return node, taken
    return None


class Running:
    """One started member: its process, where it runs, and why it is being stopped, if it is."""

    def __init__(self, member: dict, process: subprocess.Popen, node: str, gpus: list[int], start: float) -> None:
        self.member, self.process, self.node, self.gpus, self.start = member, process, node, gpus, start
        self.stop_reason: str | None = None
        self.kill_at = 0.0
        self.exited_at: float | None = None

    def stop(self, reason: str) -> None:
        """SIGTERM to the member's process group (srun, so signalled, ends its step at once); a
        member that has already exited (settling) only takes the reason."""
        if self.stop_reason is None:
            self.stop_reason, self.kill_at = reason, time.monotonic() + STOP_GRACE_SECONDS
            if self.process.returncode is None:
                self.signal(signal.SIGTERM)

    def settling(self) -> bool:
        """Whether the member, killed by a signal nobody here sent, still waits to learn whether
        its allocation is ending (its step was signalled first); noted from its first sight.

        Example:
            >>> run = Running({}, subprocess.Popen(["true"]), "c001", [0], time.time())
            >>> run.process.returncode = 143
            >>> run.settling()
            True
        """
        if self.stop_reason is not None or exit_code_of(self.process.returncode) <= 128:
            return False
        self.exited_at = self.exited_at or time.time()
        return time.time() - self.exited_at < SIGNALLED_SETTLE_SECONDS

    def signal(self, signum: int) -> None:
        """Signal the member's process group (never after its leader is reaped: see `exited`)."""
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def exited(self) -> bool:
        """Whether the member's leader has exited. Before it is reaped (while it is a zombie, the
        group's id cannot be reused) every process it left behind is killed, so its GPUs are free."""
        if self.process.returncode is not None:
            return True
        if os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return False
        self.signal(signal.SIGKILL)
        self.process.wait()
        return True


class Pile:
    """The work pile of one allocation attempt."""

    def __init__(self, manifest: dict, nodes: list[str], restart: int) -> None:
        self.placement, self.gpus_per_node, self.restart = manifest["placement"], manifest["gpus_per_node"], restart
        self.cpus_on_node = int(os.environ.get("SLURM_CPUS_ON_NODE") or 0)
        self.free = {node: list(range(self.gpus_per_node)) for node in nodes}
        self.waiting = [member for member in manifest["members"] if not self.ended_before(member)]
        self.running: list[Running] = []
        self.ending: int | None = None

    @staticmethod
    def ended_before(member: dict) -> bool:
        """Whether an earlier attempt of the allocation already ended this member."""
        status = read_status(member["work_dir"])
        return bool(status and status.get("state") in FINAL_STATES)

    def record(self, member: dict, status: dict) -> None:
        """Write a member's status.json (with this attempt's restart count) and log it. A status
        that cannot be written (a full disk, a quota) is logged only: what the launcher does
        with the member's GPUs never depends on the write (it gave them to the next member
        while the first still ran)."""
        try:
            write_json_atomically(os.path.join(member["work_dir"], STATUS_FILE), dict(status, restart=self.restart))
        except OSError as error:
            log("{} status not written ({}): {}".format(member["name"], error, json.dumps(status)))
            return
        log("{} {}".format(member["name"], json.dumps(status)))

    def start_what_fits(self) -> None:
        """Start, in pile order, every waiting member that fits on a node now."""
        for member in list(self.waiting):
            if os.path.exists(os.path.join(member["work_dir"], CANCEL_FILE)):
                self.waiting.remove(member)
                now = utc_iso(time.time())
                self.record(
                    member,
                    {
                        "state": "CANCELLED",
                        "exit_code": None,
                        "node": None,
                        "gpus": [],
                        "start": now,
                        "end": now,
                        "gpu_seconds": 0.0,
                    },
                )
                continue
            place = take_gpus(self.free, member["gpus"])
            if place is None:
                continue
            self.waiting.remove(member)
            try:
                self.running.append(self.launch(member, *place))
            except OSError as error:  # its work dir is gone, a quota: this member fails, the pile goes on
                self.free[place[0]] = sorted(self.free[place[0]] + place[1])
                now = utc_iso(time.time())
                log("{} could not start: {}".format(member["name"], error))
                self.record(
                    member,
                    {
                        "state": "FAILED",
                        "exit_code": None,
                        "node": place[0],
                        "gpus": place[1],
                        "start": now,
                        "end": now,
                        "gpu_seconds": 0.0,
                        "error": str(error),
                    },
                )

    def launch(self, member: dict, node: str, gpus: list[int]) -> Running:
        """Start a member on its GPUs, its output appended to its stdout.log and stderr.log."""
        env = dict(
            os.environ,
            CUDA_VISIBLE_DEVICES=",".join(map(str, gpus)),
            TACC_GPU_COUNT=str(member["gpus"]),
            TACC_NODE=node,
        )
        argv = member_argv(self.placement, member, node, self.gpus_per_node, self.cpus_on_node)
        work_dir = member["work_dir"]
        with (
            open(os.path.join(work_dir, "stdout.log"), "ab") as stdout,
            open(os.path.join(work_dir, "stderr.log"), "ab") as stderr,
        ):
            process = subprocess.Popen(
                argv,
                cwd=work_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
        start = time.time()
        self.record(member, {"state": "RUNNING", "node": node, "gpus": gpus, "start": utc_iso(start)})
        return Running(member, process, node, gpus, start)

    def finish(self, run: Running, state: str) -> None:
        """Record a member's end and free its GPUs."""
        end = run.exited_at or time.time()
        self.record(
            run.member,
            {
                "state": state,
                "exit_code": exit_code_of(run.process.returncode),
                "node": run.node,
                "gpus": run.gpus,
                "start": utc_iso(run.start),
                "end": utc_iso(end),
                "gpu_seconds": round(len(run.gpus) * (end - run.start), 3),
            },
        )
        self.running.remove(run)
        self.free[run.node] = sorted(self.free[run.node] + run.gpus)

    def check_running(self) -> None:
        """Stop cancelled members, kill those past their grace, record those that ended."""
        for run in list(self.running):
            if run.exited():
                if run.stop_reason == "INTERRUPTED":  # its status stays RUNNING: the allocation's end decides
                    self.running.remove(run)
                    continue
                if run.settling():
                    continue
                self.finish(run, run.stop_reason or ("COMPLETED" if run.process.returncode == 0 else "FAILED"))
                continue
            if os.path.exists(os.path.join(run.member["work_dir"], CANCEL_FILE)):
                run.stop("CANCELLED")
            if run.stop_reason and time.monotonic() > run.kill_at:
                run.signal(signal.SIGKILL)

    def stop_all(self, reason: str) -> None:
        """Stop every running member for `reason` (TIMEOUT is recorded; INTERRUPTED leaves the
        status RUNNING) and wait until they are gone; start nothing more."""
        self.check_running()
        log(f"stopping {len(self.running)} running member(s): {reason}")
        for run in self.running:
            run.stop(reason)
        while self.running:
            self.check_running()
            time.sleep(0.1)

    def run(self) -> None:
        """Work the pile until every member has ended, or the allocation is ending; should the
        launcher itself break, its members are stopped before it exits."""
        try:
            while (self.waiting or self.running) and not self.ending:
                self.check_running()
                if not self.ending:
                    self.start_what_fits()
                time.sleep(POLL_SECONDS)
        finally:
            if self.running and not self.ending:
                self.stop_all("INTERRUPTED")
        if self.ending:
            self.stop_all("TIMEOUT" if self.ending == signal.SIGUSR1 else "INTERRUPTED")

    def on_signal(self, signum: int, _frame: object) -> None:
        self.ending = signum


def log(message: str) -> None:
    print(f"{utc_iso(time.time())} launcher: {message}", flush=True)


def main(argv: list[str]) -> int:
    """Run the pile of the manifest at argv[1]; 0 once done, 2 for a manifest it cannot run."""
    if len(argv) != 2:
        print("usage: launcher.py MANIFEST", file=sys.stderr)
        return 2
    with open(argv[1]) as handle:
        manifest = json.load(handle)
    too_big = [member["name"] for member in manifest["members"] if not 1 <= member["gpus"] <= manifest["gpus_per_node"]]
    if too_big:
        print(
            "launcher: members {} do not fit on a node of {} GPUs".format(too_big, manifest["gpus_per_node"]),
            file=sys.stderr,
        )
        return 2
    pile = Pile(manifest, allocation_nodes(manifest["placement"]), int(os.environ.get("SLURM_RESTART_COUNT") or 0))
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, pile.on_signal)
    log(
        "{} member(s) to run on {} ({} GPUs each), {} ended before".format(
            len(pile.waiting), ",".join(pile.free), pile.gpus_per_node, len(manifest["members"]) - len(pile.waiting)
        )
    )
    pile.run()
    log("pile stopped: the allocation is ending" if pile.ending else "pile done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
