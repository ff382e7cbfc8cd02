"""SSH session limit benchmark: what the global concurrency limit `ssh-sessions-<host>` costs.

Against the Slurm sandbox's sshd (`scripts/slurm-sandbox.sh up`) and a running Prefect server
(`scripts/stack.sh up`; PREFECT_API_URL), measured in the same run and printed as ratios:
  - baseline: N remote `true` commands over one ControlMaster, no slot;
  - limited: the same N, each inside a slot of the limit (acquire and release on the server);
  - squeue: one `squeue --me` with a slot, next to one without (what a poll cycle pays).

    .venv/bin/python -m bench.ssh_sessions [--commands 50]
"""

from __future__ import annotations

import argparse
import subprocess
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pydantic import SecretStr

from blocks.clusters import ssh_session_slot
from blocks.credentials import TaccCredentials


def sandbox_credentials() -> TaccCredentials:
    """The sandbox as a TaccCredentials block (not saved)."""
    values = dict(
        line.split("=", 1)
        for line in subprocess.run(
            ["scripts/slurm-sandbox.sh", "env"], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    return TaccCredentials(
        username=values["TACC_SANDBOX_USER"],
        host=values["TACC_SANDBOX_HOST"],
        port=int(values["TACC_SANDBOX_PORT"]),
        private_key=SecretStr(Path(values["TACC_SANDBOX_KEY"]).read_text()),
        known_hosts=Path(values["TACC_SANDBOX_KNOWN_HOSTS"]).read_text().strip(),
    )


def seconds_per_command(
    credentials: TaccCredentials, slot: Callable[[], AbstractContextManager[object]], argv: list[str], count: int
) -> float:
    """Mean wall time of `count` sequential remote commands over one connection (opened first)."""
    with credentials.get_client(session_slot=slot) as connection:
        connection.run(["true"])
        started = time.perf_counter()
        for _ in range(count):
            connection.run(argv)
        return (time.perf_counter() - started) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commands", type=int, default=50)
    args = parser.parse_args()
    credentials = sandbox_credentials()
    slot = ssh_session_slot(credentials.host)
    for label, argv in (("true", ["true"]), ("squeue --me", ["squeue", "--me", "--noheader"])):
        baseline = seconds_per_command(credentials, nullcontext, argv, args.commands)
        limited = seconds_per_command(credentials, slot, argv, args.commands)
        print(
            f"{label:12s} no slot {baseline * 1000:7.1f} ms   with slot {limited * 1000:7.1f} ms   "
            f"ratio {limited / baseline:5.2f}x   (+{(limited - baseline) * 1000:.1f} ms per command, {args.commands} commands)"
        )


if __name__ == "__main__":
    main()
