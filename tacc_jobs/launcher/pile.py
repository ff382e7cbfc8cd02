"""Stand-in packed-allocation launcher (to be replaced by the launcher branch): runs a manifest's
members as a work pile, each on its own GPUs, writing each member's output/status.json.

Stdlib only; run as `python3 launcher.py <manifest.json>` inside the allocation.
"""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

STATUS_FILE = "output/status.json"
CANCEL_FILE = "cancel"
STOPPING = []


def now():
    return datetime.now(timezone.utc)


def write_status(work_dir, status):
    path = os.path.join(work_dir, STATUS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(status, handle)
    os.replace(path + ".tmp", path)


def read_status(work_dir):
    try:
        with open(os.path.join(work_dir, STATUS_FILE)) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def node_names(placement):
    if placement == "srun":
        listed = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                                capture_output=True, text=True, check=True).stdout.split()
        return listed
    return ["local-%d" % index for index in range(int(os.environ.get("SLURM_JOB_NUM_NODES", "1")))]


def start(member, node, gpus, placement, restart):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES=",".join(str(gpu) for gpu in gpus),
               TACC_GPU_COUNT=str(member["gpus"]), TACC_NODE=node)
    work_dir = member["work_dir"]
    argv = ["bash", member["script"]]
    if placement == "srun":
        argv = ["srun", "--exclusive", "-N1", "-n1", "-w", node, "--job-name", member["name"], "--export=ALL"] + argv
    out = open(os.path.join(work_dir, "stdout.log"), "ab")
    err = open(os.path.join(work_dir, "stderr.log"), "ab")
    process = subprocess.Popen(argv, cwd=work_dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                               start_new_session=True)
    started = now()
    write_status(work_dir, {"state": "RUNNING", "node": node, "gpus": gpus, "start": started.isoformat(), "restart": restart})
    return {"member": member, "process": process, "node": node, "gpus": gpus, "start": started, "cancelled": False}


def finish(run, state, exit_code, restart):
    end = now()
    run["member"]["done"] = True
    write_status(run["member"]["work_dir"], {
        "state": state, "exit_code": exit_code, "node": run["node"], "gpus": run["gpus"],
        "start": run["start"].isoformat(), "end": end.isoformat(),
        "gpu_seconds": round(len(run["gpus"]) * (end - run["start"]).total_seconds(), 3), "restart": restart})


def stop(run):
    try:
        os.killpg(run["process"].pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


def main(manifest_path):
    with open(manifest_path) as handle:
        manifest = json.load(handle)
    placement, per_node = manifest["placement"], manifest["gpus_per_node"]
    restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, lambda *_: STOPPING.append(True))
    free = {node: list(range(per_node)) for node in node_names(placement)}
    pile = []
    for member in manifest["members"]:
        previous = read_status(member["work_dir"])
        if previous and previous.get("state") != "RUNNING":
            continue
        pile.append(member)
    running = []
    while pile or running:
        for member in list(pile):
            if os.path.exists(os.path.join(member["work_dir"], CANCEL_FILE)):
                pile.remove(member)
                stamp = now().isoformat()
                write_status(member["work_dir"], {"state": "CANCELLED", "exit_code": 0, "node": None, "gpus": [],
                                                  "start": stamp, "end": stamp, "gpu_seconds": 0.0, "restart": restart})
                continue
            node = next((name for name, gpus in free.items() if len(gpus) >= member["gpus"]), None)
            if node is None or STOPPING:
                continue
            gpus, free[node] = free[node][:member["gpus"]], free[node][member["gpus"]:]
            running.append(start(member, node, gpus, placement, restart))
            pile.remove(member)
        for run in list(running):
            if not run["cancelled"] and os.path.exists(os.path.join(run["member"]["work_dir"], CANCEL_FILE)):
                run["cancelled"] = True
                stop(run)
            if STOPPING and not run.get("timed_out"):
                run["timed_out"] = True
                stop(run)
            code = run["process"].poll()
            if code is None:
                continue
            running.remove(run)
            free[run["node"]] = sorted(free[run["node"]] + run["gpus"])
            state = "CANCELLED" if run["cancelled"] else "TIMEOUT" if run.get("timed_out") else "COMPLETED" if code == 0 else "FAILED"
            finish(run, state, code, restart)
        if STOPPING and not running:
            break
        time.sleep(0.2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
