"""The scheduler's health, for `scripts/stack.sh status` and `up`: does the server make the runs
that the deployments' schedules promise, and what did its scheduler service last fail on.

A server whose scheduler service fails (SQLAlchemy 2.1 under Prefect 3.8 did) still answers
`/health`, serves the UI and runs what is started by hand: only the schedules stop, so
watch-jobs, the nightly ingestion and the clean-up never run. This is the check that sees it.

Example:
    ```bash
    python -m deployments.health --server-log ~/.tacc-orchestrator/stack/server.log
    python -m deployments.health --server-log ~/.tacc-orchestrator/stack/server.log --wait 60
    ```
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort

# A record of Prefect's server log starts "HH:MM:SS.fff | LEVEL | logger - message".
LOG_RECORD = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| (\w+)\s*\| (.*)$")
LATE_AFTER_SECONDS = 60
SCHEDULER_SERVICES = ("schedule_deployments", "schedule_recent_deployments", "prefect.server.services.scheduler")


@dataclass(frozen=True)
class SchedulerError:
    """The last error of the server's scheduler service, as its log tells it."""

    logged_at: str
    error: str

    def __str__(self) -> str:
        return f"{self.logged_at} {self.error}"


@dataclass(frozen=True)
class SchedulerHealth:
    """What the server has scheduled, against what the deployments ask of it."""

    scheduled_deployments: list[str]
    waiting_for_runs: list[str]
    next_run: tuple[str, datetime] | None
    last_error: SchedulerError | None

    @property
    def ok(self) -> bool:
        """Every deployment with an active schedule has a run scheduled."""
        return not self.waiting_for_runs

    def lines(self) -> list[str]:
        """The report `stack.sh status` prints."""
        if self.next_run:
            name, when = self.next_run
            state = "ok" if self.ok else f"FAILING: no run scheduled for {', '.join(self.waiting_for_runs)}"
            late = (datetime.now(timezone.utc) - when).total_seconds()
            lateness = f" (late by {late:.0f} s: is a worker polling the pool?)" if late > LATE_AFTER_SECONDS else ""
            lines = [f"scheduler  {state}; next run {name} at {when:%Y-%m-%d %H:%M:%S %Z}{lateness}"]
        elif self.scheduled_deployments:
            lines = [
                f"scheduler  FAILING: no run scheduled for any of {len(self.scheduled_deployments)} scheduled deployments"
            ]
        else:
            lines = ["scheduler  idle: no deployment has an active schedule"]
        if self.last_error:
            lines.append(f"scheduler  last error {self.last_error}")
        return lines


def last_scheduler_error(server_log: Path) -> SchedulerError | None:
    """The last error that the server's scheduler service logged, with its exception line.

    Example:
        >>> import tempfile
        >>> log = Path(tempfile.mkdtemp()) / "server.log"
        >>> _ = log.write_text(
        ...     "18:02:01.473 | ERROR   | docket.dependencies - schedule_deployments(){schedule_deployments}\\n"
        ...     "Traceback (most recent call last):\\n"
        ...     "sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement\\n"
        ...     "18:02:02.000 | INFO    | prefect.server - all is well\\n")
        >>> print(last_scheduler_error(log))
        18:02:01.473 sqlalchemy.exc.InvalidRequestError: Can't evaluate bulk DML statement
    """
    if not server_log.exists():
        return None
    last: SchedulerError | None = None
    header: re.Match[str] | None = None
    body: list[str] = []

    def close() -> None:
        nonlocal last
        if header and header[2] in ("ERROR", "CRITICAL") and any(name in header[3] for name in SCHEDULER_SERVICES):
            exception = next((line for line in reversed(body) if line.strip() and not line.startswith(" ")), header[3])
            last = SchedulerError(header[1], exception.strip())

    for line in server_log.read_text(errors="replace").splitlines():
        record = LOG_RECORD.match(line)
        if record:
            close()
            header, body = record, []
        else:
            body.append(line)
    close()
    return last


def scheduler_health(server_log: Path) -> SchedulerHealth:
    """Ask the server which deployments have active schedules, and which runs it has scheduled."""
    with get_client(sync_client=True) as client:
        deployments = [d for d in client.read_deployments() if not d.paused and any(s.active for s in d.schedules)]
        scheduled = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))
            ),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
        )
    names = {deployment.id: deployment.name for deployment in deployments}
    with_runs = {run.deployment_id for run in scheduled if run.auto_scheduled}
    first = next((run for run in scheduled if run.auto_scheduled and run.deployment_id in names), None)
    return SchedulerHealth(
        scheduled_deployments=sorted(names.values()),
        waiting_for_runs=sorted(name for id_, name in names.items() if id_ not in with_runs),
        next_run=(names[first.deployment_id], first.expected_start_time)
        if first and first.expected_start_time
        else None,
        last_error=last_scheduler_error(server_log),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server-log", type=Path, required=True, help="the Prefect server's log file")
    parser.add_argument("--wait", type=float, default=0, help="seconds to wait for every schedule to have a run")
    args = parser.parse_args()
    deadline = time.monotonic() + args.wait
    health = scheduler_health(args.server_log)
    while not health.ok and time.monotonic() < deadline:
        time.sleep(2)
        health = scheduler_health(args.server_log)
    print("\n".join(health.lines()))
    raise SystemExit(0 if health.ok else 1)


if __name__ == "__main__":
    main()
