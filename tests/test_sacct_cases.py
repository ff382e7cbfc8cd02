"""The cases real sacct output holds (issue 14, items 1-6 and 9), each on `sacct --parsable2
--duplicates` text as Slurm 22.05 prints it, ingested into SQLite and PostgreSQL."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, select, text

from tacc_jobs.accounting import metrics
from tacc_jobs.accounting.ingest import IngestSummary, ingest_chunks, sacct_chunks
from tacc_jobs.accounting.normalize import CostRates, normalize_records
from tacc_jobs.accounting.warehouse import Warehouse
from tacc_jobs.schedulers import SACCT_FIELDS
from tacc_jobs.schedulers.base import sacct_rows
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.schedulers.slurm import SlurmScheduler
from tacc_jobs.ssh import SshConnection
from tacc_jobs.store import migrate
from tacc_jobs.store.schema import MIGRATIONS_DIR
from tacc_jobs.store.tables import JobUsageRow
from tests.conftest import start_now, wait_until
from tests.test_local_scheduler import final_state, submission

NOV = (datetime(2026, 11, 1, tzinfo=timezone.utc), datetime(2026, 12, 1, tzinfo=timezone.utc))
UTC = timezone.utc


def ingest(warehouse: Warehouse, text: str, chunk_size: int = 100) -> IngestSummary:
    """Ingest sacct output text, as `Scheduler.accounting` streams it, for ls6."""
    summary = IngestSummary(
        run_id=warehouse.start_run("sacct", "ls6", *NOV),
        source="sacct",
        system="ls6",
        window_start=NOV[0],
        window_end=NOV[1],
    )
    return ingest_chunks(
        warehouse, sacct_chunks(sacct_rows(text.splitlines()), "ls6", CostRates(), {}, chunk_size), summary
    )


def stored(warehouse: Warehouse) -> list[JobUsageRow]:
    """Every stored attempt, by job id and submit time."""
    with warehouse.engine.connect() as connection:
        return list(connection.execute(select(JobUsageRow).order_by(JobUsageRow.job_id, JobUsageRow.submit_time)))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# Item 1. Job 4242 ran in 2025; a controller reset (FirstJobId) handed the same id out again in 2026.
REUSED_ID = """\
4242|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2025-06-10T08:00:00|2025-06-10T08:00:00|2025-06-10T08:02:11|2025-06-10T10:02:11|02:00:00|04:00:00|1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||llama-finetune
4242.batch||ml-research||COMPLETED|0:0|2025-06-10T08:02:11|2025-06-10T08:02:11|2025-06-10T08:02:11|2025-06-10T10:02:11|02:00:00||1|cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|cpu=1-10:00:00,energy=0,fs/disk=5120,mem=52G,pages=12,vmem=60G|52G|batch
4242.extern||ml-research||COMPLETED|0:0|2025-06-10T08:02:11|2025-06-10T08:02:11|2025-06-10T08:02:11|2025-06-10T10:02:11|02:00:00||1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|cpu=00:00:00,energy=0,fs/disk=2012,mem=0,pages=0,vmem=0|0|extern
4242|asmith|data-science|gpu-h100|FAILED|2:0|2026-11-03T14:20:05|2026-11-03T14:20:05|2026-11-03T14:20:06|2026-11-03T14:50:06|00:30:00|01:00:00|1|billing=96,cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|||xgb-forecast
4242.batch||data-science||FAILED|2:0|2026-11-03T14:20:06|2026-11-03T14:20:06|2026-11-03T14:20:06|2026-11-03T14:50:06|00:30:00||1|cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|cpu=00:45:00,energy=0,fs/disk=2386,mem=3G,pages=0,vmem=4G|3G|batch
"""


def test_a_reused_job_id_is_another_job(warehouse: Warehouse) -> None:
    first = ingest(warehouse, REUSED_ID)
    assert (first.inserted, first.steps_folded, first.failed) == (2, 3, 0)
    again = ingest(warehouse, REUSED_ID.split("4242|asmith")[0])  # the 2025 job alone, as a narrower window returns it
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 1)
    old, new = stored(warehouse)
    assert (old.submit_time, old.user_name, old.status, old.su_charged) == (
        at("2025-06-10T08:00:00"),
        "jdoe",
        "completed",
        1 * 2 * 4,
    )
    assert (new.submit_time, new.user_name, new.status, new.su_charged) == (
        at("2026-11-03T14:20:05"),
        "asmith",
        "failed",
        1 * 0.5 * 6,
    )
    assert old.final_attempt and new.final_attempt, "a reused id is not a requeue: both jobs are final"


# Item 2. 7001: a node failed under it after 2 hours and Slurm requeued it; its next attempt was
# submitted when the epilog ended and eligible 121 s later (requeue delay + 1). 7002: `scontrol
# requeue`, as the sandbox printed it (state REQUEUED).
REQUEUED = """\
7001|jdoe|ml-research|gpu-a100|NODE_FAIL|0:0|2026-11-02T08:00:00|2026-11-02T08:00:00|2026-11-02T08:10:00|2026-11-02T10:10:00|02:00:00|06:00:00|2|billing=256,cpu=256,gres/gpu:a100=6,gres/gpu=6,mem=500G,node=2|||pretrain
7001.batch||ml-research||CANCELLED|0:15|2026-11-02T08:10:00|2026-11-02T08:10:00|2026-11-02T08:10:00|2026-11-02T10:10:00|02:00:00||1|cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|cpu=2-00:00:00,energy=0,fs/disk=9120,mem=80G,pages=0,vmem=90G|80G|batch
7001|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-02T10:10:07|2026-11-02T10:12:08|2026-11-02T10:30:00|2026-11-02T13:30:00|03:00:00|06:00:00|2|billing=256,cpu=256,gres/gpu:a100=6,gres/gpu=6,mem=500G,node=2|||pretrain
7001.batch||ml-research||COMPLETED|0:0|2026-11-02T10:30:00|2026-11-02T10:30:00|2026-11-02T10:30:00|2026-11-02T13:30:00|03:00:00||1|cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|cpu=3-00:00:00,energy=0,fs/disk=9120,mem=81G,pages=0,vmem=91G|81G|batch
7002|tacctest|sandbox|gpu-a100|REQUEUED|0:0|2026-11-28T17:54:36|2026-11-28T17:54:36|2026-11-28T17:54:37|2026-11-28T17:54:40|00:00:03|00:05:00|1|billing=1,cpu=1,node=1|||exp14
7002.batch||sandbox||CANCELLED|0:15|2026-11-28T17:54:37|2026-11-28T17:54:37|2026-11-28T17:54:37|2026-11-28T17:54:40|00:00:03||1|cpu=1,mem=0,node=1|||batch
7002|tacctest|sandbox|gpu-a100|COMPLETED|0:0|2026-11-28T17:54:40|2026-11-28T17:56:41|2026-11-28T17:56:41|2026-11-28T17:57:01|00:00:20|00:05:00|1|billing=1,cpu=1,node=1|||exp14
7002.batch||sandbox||COMPLETED|0:0|2026-11-28T17:56:41|2026-11-28T17:56:41|2026-11-28T17:56:41|2026-11-28T17:57:01|00:00:20||1|cpu=1,mem=0,node=1|||batch
"""


def test_every_attempt_of_a_requeued_job_is_stored_and_charged_and_the_final_one_marked(warehouse: Warehouse) -> None:
    summary = ingest(warehouse, REQUEUED)
    assert (summary.inserted, summary.failed) == (4, 0)
    first, second, requeued, rerun = stored(warehouse)
    assert [(row.job_id, row.status, row.final_attempt) for row in (first, second, requeued, rerun)] == [
        ("7001", "node_fail", False),
        ("7001", "completed", True),
        ("7002", "requeued", False),
        ("7002", "completed", True),
    ]
    assert (first.su_charged, second.su_charged) == (2 * 2 * 4, 2 * 3 * 4), "Slurm charges every attempt's elapsed time"
    assert second.eligible_time - second.submit_time == timedelta(seconds=121)
    waits = {(row["queue"], row["week"]): row for row in metrics.wait_by_queue_and_week(warehouse.engine, *NOV)}
    assert waits["gpu-a100", date(2026, 11, 2)]["max_wait_minutes"] == round((17 * 60 + 52) / 60, 1), (
        "from eligible, not submit"
    )
    success = {row["agent"]: row for row in metrics.success_by_agent(warehouse.engine, *NOV)}
    assert (
        success["pretrain"]["jobs"],
        success["pretrain"]["completed"],
        success["pretrain"]["requeued_attempts"],
    ) == (1, 1, 1)


def test_an_attempt_is_unmarked_when_its_successor_comes_in_a_later_run(warehouse: Warehouse) -> None:
    lines = REQUEUED.splitlines()
    ingest(warehouse, "\n".join(lines[:2]))  # the nightly run before the next attempt was eligible
    assert [row.final_attempt for row in stored(warehouse)] == [True]
    ingest(warehouse, "\n".join(lines[2:4]))  # a later window holding the next attempt only
    assert [(row.status, row.final_attempt) for row in stored(warehouse)] == [("node_fail", False), ("completed", True)]


# Item 3. GPUs from AllocTRES: the untyped count when present, else the typed ones summed.
GPUS = """\
6001|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-04T09:00:00|2026-11-04T09:00:00|2026-11-04T09:00:30|2026-11-04T11:00:30|02:00:00|04:00:00|1|billing=128,cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|||typed-and-untyped
6002|asmith|data-science|gpu-h100|COMPLETED|0:0|2026-11-04T09:00:00|2026-11-04T09:00:00|2026-11-04T09:00:30|2026-11-04T11:00:30|02:00:00|04:00:00|1|billing=96,cpu=96,gres/gpu:h100=2,mem=200G,node=1|||typed-only
6003|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-04T09:00:00|2026-11-04T09:00:00|2026-11-04T09:00:30|2026-11-04T11:00:30|02:00:00|04:00:00|1|billing=128,cpu=128,gres/gpu=0,mem=250G,node=1|||zero
6004|asmith|data-science|gpu-a100|COMPLETED|0:0|2026-11-04T09:00:00|2026-11-04T09:00:00|2026-11-04T09:00:30|2026-11-04T11:00:30|02:00:00|04:00:00|2|billing=256,cpu=256,gres/gpu:a100=4,gres/gpu:a30=2,mem=500G,node=2|||two-types
6005|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-04T09:00:00|2026-11-04T09:00:00|2026-11-04T09:00:30|2026-11-04T11:00:30|02:00:00|04:00:00|2|billing=256,cpu=256,mem=500G,node=2|||whole-nodes
"""


def test_gpus_come_from_alloc_tres(warehouse: Warehouse) -> None:
    ingest(warehouse, GPUS)
    gpus = {row.job_name: (row.gpu_count, row.gpu_type, row.gpu_hours) for row in stored(warehouse)}
    assert gpus == {
        "typed-and-untyped": (3, "a100", 6.0),
        "typed-only": (2, "h100", 4.0),
        "zero": (0, "a100", 0.0),
        "two-types": (6, "a100", 12.0),
        "whole-nodes": (6, "a100", 12.0),
    }
    assert "ReqTRES" not in SACCT_FIELDS, "with --exclusive, ReqTRES shows no GPUs"


# Item 4. Names holding the delimiter, and a newline (sacct prints both raw).
NAMES = """\
8001|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-05T12:00:00|2026-11-05T12:00:00|2026-11-05T12:00:01|2026-11-05T12:30:01|00:30:00|01:00:00|1|billing=128,cpu=128,gres/gpu=3,mem=250G,node=1|||sweep|lr=3e-4|bs=64
8001.batch||ml-research||COMPLETED|0:0|2026-11-05T12:00:01|2026-11-05T12:00:01|2026-11-05T12:00:01|2026-11-05T12:30:01|00:30:00||1|cpu=128,gres/gpu=3,mem=250G,node=1|cpu=01:00:00,energy=0,fs/disk=2386,mem=2G,pages=0,vmem=3G|2G|batch
8002|jdoe|ml-research|gpu-a100|FAILED|1:0|2026-11-05T12:00:00|2026-11-05T12:00:00|2026-11-05T12:00:01|2026-11-05T12:10:01|00:10:00|01:00:00|1|billing=128,cpu=128,gres/gpu=3,mem=250G,node=1|||first line
second|line
"""


def test_names_with_delimiters_keep_the_fields_aligned(warehouse: Warehouse) -> None:
    summary = ingest(warehouse, NAMES)
    assert (summary.inserted, summary.failed) == (2, 0)
    rows = {row.job_id: row for row in stored(warehouse)}
    assert rows["8001"].job_name == "sweep|lr=3e-4|bs=64" and rows["8002"].job_name == "first line\nsecond|line"
    assert [
        (rows[job].partition, rows[job].status, rows[job].nodes, rows[job].gpu_count) for job in ("8001", "8002")
    ] == [("gpu-a100", "completed", 1, 3), ("gpu-a100", "failed", 1, 3)]


# Item 5. One heterogeneous job: 2 A100 nodes and 1 H100 node, each component with its steps.
HETEROGENEOUS = """\
5000+0|jdoe|ml-research|gpu-a100|COMPLETED|0:0|2026-11-06T09:00:00|2026-11-06T09:00:00|2026-11-06T09:05:00|2026-11-06T11:05:00|02:00:00|04:00:00|2|billing=256,cpu=256,gres/gpu:a100=6,gres/gpu=6,mem=500G,node=2|||coupled
5000+0.batch||ml-research||COMPLETED|0:0|2026-11-06T09:05:00|2026-11-06T09:05:00|2026-11-06T09:05:00|2026-11-06T11:05:00|02:00:00||1|cpu=128,gres/gpu:a100=3,gres/gpu=3,mem=250G,node=1|cpu=04:00:00,energy=0,fs/disk=2386,mem=20G,pages=0,vmem=21G|20G|batch
5000+0.0||ml-research||COMPLETED|0:0|2026-11-06T09:05:01|2026-11-06T09:05:01|2026-11-06T09:05:01|2026-11-06T11:05:00|01:59:59||2|cpu=256,gres/gpu:a100=6,gres/gpu=6,mem=500G,node=2|cpu=4-04:00:00,energy=0,fs/disk=9120,mem=240G,pages=0,vmem=250G|120G|python
5000+1|jdoe|ml-research|gpu-h100|COMPLETED|0:0|2026-11-06T09:00:00|2026-11-06T09:00:00|2026-11-06T09:05:00|2026-11-06T11:05:00|02:00:00|04:00:00|1|billing=96,cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|||coupled
5000+1.0||ml-research||COMPLETED|0:0|2026-11-06T09:05:01|2026-11-06T09:05:01|2026-11-06T09:05:01|2026-11-06T11:05:00|01:59:59||1|cpu=96,gres/gpu:h100=2,gres/gpu=2,mem=200G,node=1|cpu=2-00:00:00,energy=0,fs/disk=2386,mem=150G,pages=0,vmem=160G|150G|python
"""


def test_heterogeneous_components_fold_into_one_job(warehouse: Warehouse) -> None:
    summary = ingest(warehouse, HETEROGENEOUS, chunk_size=2)  # a chunk never cuts a job's components apart
    assert (summary.inserted, summary.steps_folded, summary.failed) == (1, 3, 0)
    (job,) = stored(warehouse)
    assert (job.job_id, job.partition, job.nodes, job.gpu_count, job.cpus) == ("5000", "gpu-a100", 3, 8, 352)
    assert job.su_charged == 2 * 2 * 4 + 1 * 2 * 6, "each component charged in its own queue"
    assert job.gpu_hours == 16.0 and job.mem_bytes == 700 * 2**30
    assert job.cpu_seconds == (4 + 100 + 48) * 3600, "CPU time summed over every step"
    assert job.max_rss_bytes == 150 * 2**30, "MaxRSS is the largest of any step, not a sum"
    (efficiency,) = metrics.job_efficiency(warehouse.engine, *NOV)
    assert efficiency["cpu_efficiency_pct"] == round(100 * 152 / (352 * 2), 1)
    assert efficiency["memory_efficiency_pct"] == round(100 * 150 * 3 / 700, 1)


# Item 6. sacct's times are UTC because sacct runs with TZ=UTC; file and HTTP times without an
# offset are in the source's declared zone.
class RecordedSacct:
    """A transport that answers every command with the same output and records the argv."""

    commands_run = 0

    def __init__(self, text: str) -> None:
        self.text = text
        self.argv: list[str] = []

    def run(self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None) -> Any:
        raise AssertionError("accounting streams")

    def stream(self, argv: Sequence[str]) -> Iterator[str]:
        self.argv = list(argv)
        yield from self.text.splitlines()


def test_sacct_runs_in_utc_with_standard_times_every_attempt_and_no_state_filter() -> None:
    transport = RecordedSacct(NAMES)
    chicago = ZoneInfo("America/Chicago")
    rows = list(
        SlurmScheduler(transport, "ls6", "/scratch").accounting(
            datetime(2026, 11, 1, 0, 30, tzinfo=chicago), datetime(2026, 11, 2, 1, 30, tzinfo=chicago)
        )
    )
    assert transport.argv == [
        "env",
        "TZ=UTC",
        "SLURM_TIME_FORMAT=standard",
        "sacct",
        "--noheader",
        "--parsable2",
        "--duplicates",
        "--starttime=2026-11-01T05:30:00",
        "--endtime=2026-11-02T07:30:00",
        f"--format={','.join(SACCT_FIELDS)}",
    ]
    assert [len(row) for row in rows] == [len(SACCT_FIELDS)] * 3 and rows[2][-1] == "first line\nsecond|line"


DST_RECORDS = [
    {
        "job_id": "dst-1",
        "team_name": "ml-research",
        "model_name": "llama",
        "provider": "TACC",
        "gpu_type": "a100",
        "gpu_count": 3,
        "start_time": "2026-11-01T01:50:00",
        "end_time": "2026-11-01T01:10:00",
        "status": "COMPLETED",
    },
    {
        "job_id": "dst-2",
        "team_name": "ml-research",
        "model_name": "llama",
        "provider": "TACC",
        "gpu_type": "a100",
        "gpu_count": 3,
        "start_time": "2026-11-01T01:30:00",
        "end_time": "2026-11-01T03:00:00-06:00",
        "status": "COMPLETED",
    },
    {
        "job_id": "dst-3",
        "team_name": "ml-research",
        "model_name": "llama",
        "provider": "TACC",
        "gpu_type": "a100",
        "gpu_count": 3,
        "start_time": "2026-03-08T02:30:00",
        "end_time": "2026-03-08T04:00:00",
        "status": "COMPLETED",
    },
]


@pytest.mark.parametrize(
    ("zone", "expected"),
    [
        (
            "America/Chicago",
            {
                "dst-1": (
                    "2026-11-01T06:50:00",
                    "2026-11-01T07:10:00",
                ),  # the end's second 01:10 (CST): after the start
                "dst-2": ("2026-11-01T06:30:00", "2026-11-01T09:00:00"),  # the first 01:30 (CDT); an offset wins
                "dst-3": ("2026-03-08T08:00:00", "2026-03-08T09:00:00"),
            },
        ),  # 02:30 never happened: 03:00 CDT
        (
            "UTC",
            {
                "dst-2": ("2026-11-01T01:30:00", "2026-11-01T09:00:00"),
                "dst-3": ("2026-03-08T02:30:00", "2026-03-08T04:00:00"),
            },
        ),
    ],
)
def test_file_times_without_an_offset_are_in_the_declared_zone(
    warehouse: Warehouse, zone: str, expected: dict[str, tuple[str, str]]
) -> None:
    chunk = normalize_records(pd.DataFrame(DST_RECORDS), "file", CostRates(), zone)
    summary = IngestSummary(
        run_id=warehouse.start_run("file", "-", *NOV), source="file", system="-", window_start=NOV[0], window_end=NOV[1]
    )
    ingest_chunks(warehouse, iter([chunk]), summary)
    times = {row.job_id: (row.start_time, row.end_time) for row in stored(warehouse)}
    assert times == {job: (at(start), at(end)) for job, (start, end) in expected.items()}
    if zone == "UTC":
        assert list(chunk.quarantine["reason"]) == ["end_time is before start_time"], "01:10 UTC is before 01:50 UTC"


# Item 9. The window is sacct's without --state: every job eligible before its end that had not
# ended before its start, however long ago it was submitted.
def test_the_window_holds_every_job_that_ended_in_it(tmp_path) -> None:
    cluster = LocalScheduler(tmp_path / "cluster")
    job_id = cluster.submit(submission(cluster, "sleep 1.5"))
    state = final_state(cluster, job_id)
    assert state.state == "COMPLETED"

    def returned(start: datetime, end: datetime) -> bool:
        return any(row[0] == job_id for row in cluster.accounting(start, end))

    assert returned(state.start + timedelta(seconds=1), state.end + timedelta(seconds=1)), (
        "submitted and started before the window"
    )
    assert returned(state.end, state.end + timedelta(hours=1)), "ended at the window's start"
    assert returned(state.start - timedelta(hours=1), state.start + timedelta(seconds=1)), (
        "running through the window's end"
    )
    assert not returned(state.end + timedelta(seconds=1), state.end + timedelta(hours=1)), "ended before the window"


class LoginNode:
    """A login node whose local zone is `zone`, with a profile that asks for relative times."""

    def __init__(self, transport: SshConnection, zone: str) -> None:
        self.transport, self.environment = transport, ["env", f"TZ={zone}", "SLURM_TIME_FORMAT=relative"]
        self.commands_run = 0

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.transport.run([*self.environment, *argv], stdin=stdin, timeout=timeout)

    def stream(self, argv: Sequence[str]) -> Iterator[str]:
        return self.transport.stream([*self.environment, *argv])


def test_a_requeued_job_read_on_a_login_node_in_chicago(sandbox_connection: SshConnection, postgres_url: str) -> None:
    login = LoginNode(sandbox_connection, "America/Chicago")
    start, name = datetime.now(UTC) - timedelta(seconds=5), f"tz|{uuid.uuid4().hex[:6]}"
    job_id = login.run(
        [
            "sbatch",
            "--parsable",
            "--requeue",
            "-p",
            "gpu-a100",
            "-t",
            "00:02:00",
            "-J",
            name,
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 2",
        ]
    ).stdout.strip()
    wait_until(lambda: login.run(["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip() == "RUNNING", 60, 0.5)
    time.sleep(1.1)  # attempts submitted in the same second share the warehouse key (left for issue 25)
    assert login.run(["scontrol", "requeue", job_id]).returncode == 0
    # once requeued, Slurm holds the next attempt for its requeue delay (121 s): skip that
    wait_until(
        lambda: login.run(["squeue", "-h", "-j", job_id, "-o", "%T %r"]).stdout.strip() == "PENDING BeginTime", 60, 0.5
    )
    start_now(job_id)  # not within the second the first attempt ended (seen in CI: "Job credential revoked")

    def attempts(time_format: str) -> list[list[str]]:
        output = login.run(
            [
                "env",
                f"SLURM_TIME_FORMAT={time_format}",
                "sacct",
                "-D",
                "-X",
                "-n",
                "-P",
                "-j",
                job_id,
                "--format=State,Submit,Start,End",
            ]
        ).stdout
        return [line.split("|") for line in output.splitlines()]

    def both_attempts() -> list[list[str]] | None:
        rows = [row for row in attempts("%s") if int(row[1]) >= start.timestamp()]  # epoch seconds: no zone at all
        return (
            rows if [row[0] for row in rows] == ["REQUEUED", "COMPLETED"] else None
        )  # (the sandbox may have reused the id)

    epochs = wait_until(both_attempts, 90, 1)
    engine = create_engine(postgres_url)
    migrate(engine)
    warehouse = Warehouse(engine)
    window = (start - timedelta(days=1), datetime.now(UTC) + timedelta(days=1))  # today's run (a fixed month expired)
    summary = IngestSummary(
        run_id=warehouse.start_run("sacct", "chicago", *window),
        source="sacct",
        system="chicago",
        window_start=window[0],
        window_end=window[1],
    )
    scheduler, until = SlurmScheduler(login, "chicago", "/tmp"), datetime.now(UTC) + timedelta(minutes=1)
    # slurmdbd answers `sacct -j` with the new attempt a moment before its windowed query lists it
    # (seen in CI: the window held only the REQUEUED attempt): read the window once it holds both
    accounting = wait_until(
        lambda: (
            (rows := list(scheduler.accounting(start, until)))
            and [row[SACCT_FIELDS.index("JobName")] for row in rows if row[0] == job_id] == [name, name]
            and rows
        ),
        30,
        1,
    )
    ingest_chunks(warehouse, sacct_chunks(accounting, "chicago", CostRates(), {}, 1000), summary)
    with engine.connect() as connection:
        rows = list(
            connection.execute(
                select(JobUsageRow)
                .where(JobUsageRow.system == "chicago", JobUsageRow.job_id == job_id)
                .order_by(JobUsageRow.submit_time)
            )
        )
    engine.dispose()
    assert [(row.job_name, row.status, row.final_attempt) for row in rows] == [
        (name, "requeued", False),
        (name, "completed", True),
    ]
    assert [
        [
            row.status.upper(),
            *(str(int(moment.timestamp())) for moment in (row.submit_time, row.start_time, row.end_time)),
        ]
        for row in rows
    ] == epochs, "the instants Slurm holds, whatever the login node's zone"
    local_start = datetime.fromisoformat(attempts("standard")[-1][2])
    assert local_start == rows[1].start_time.astimezone(ZoneInfo("America/Chicago")).replace(tzinfo=None), (
        "the node is not UTC"
    )


def test_the_migration_keeps_stored_jobs_and_the_downgrade_keeps_the_newest_attempt(engine) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))

    def to(revision: str, step: Callable[[Config, str], None]) -> None:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            step(config, revision)

    to("0004", command.upgrade)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO job_usage (system, job_id, status, submit_time, start_time, elapsed_seconds, nodes, gpu_count, gpu_hours, "
                "cost_usd, source, ingested_at) VALUES ('ls6', '1', 'completed', NULL, :start, 60, 1, 3, 0.05, 0.02, 'file', :now)"
            ),
            {"start": datetime(2026, 11, 1, tzinfo=UTC), "now": datetime(2026, 11, 2, tzinfo=UTC)},
        )
    to("head", command.upgrade)
    warehouse = Warehouse(engine)
    (old,) = stored(warehouse)
    assert (old.submit_time, old.final_attempt, old.eligible_time) == (at("2026-11-01T00:00:00"), True, None), (
        "submit from start"
    )
    ingest(warehouse, REUSED_ID.replace("4242", "1"))
    assert len(stored(warehouse)) == 3
    to("0004", command.downgrade)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT job_id, status FROM job_usage")).all()
    assert [tuple(row) for row in rows] == [("1", "failed")], "one row per (system, job id): the newest"
