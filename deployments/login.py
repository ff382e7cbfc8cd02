"""Log in to a system's login node once, as a person, so that every worker process can use it.

TACC asks for a token code (MFA) at every SSH login, which a worker cannot type. When the
master connection that commands ride is gone (the login node rebooted, `ControlPersist` ran
out), sweeps note "waiting for the login node" on the system's jobs and emit a
`tacc.login-node.unavailable` event; nothing fails. Run this on the worker host, answer the
prompt, and the next sweep resumes by itself.

Example:
    ```bash
    python -m deployments.login ls6            # the master lives 12 hours
    python -m deployments.login ls6 --persist 7d
    ```
"""

from __future__ import annotations

import argparse

from blocks.clusters import credentials_for


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deployments.login", description=__doc__.split("\n\n")[0])
    parser.add_argument("system", help="the system whose TaccCredentials block to log in with, e.g. ls6")
    parser.add_argument("--persist", default="12h", help="how long the master connection lives (ssh's ControlPersist)")
    arguments = parser.parse_args(argv)
    try:
        credentials = credentials_for(arguments.system)
    except ValueError as error:  # no such block: say so, as any other bad argument
        parser.error(str(error))
    if not credentials.control_path:
        parser.error(
            f"TaccCredentials block {arguments.system!r} has no control_path: set one (e.g. ~/.ssh/cm-%C) "
            "so that the workers' commands ride the master this login opens"
        )
    with credentials.get_client() as connection:
        status = connection.open_master(arguments.persist)
    print(f"{arguments.system}: master connection {'open' if status == 0 else f'not opened (ssh exit {status})'}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
