"""Tracking benchmark: watch-jobs sweeps over 1, 100, 1,000 and 5,000 active jobs.

The jobs are real embedded-cluster jobs (`LocalScheduler`, a fresh cluster per size) recorded
in a job store on PostgreSQL (a fresh database on 127.0.0.1:5432, dropped at the end), reached
the way the flows reach it: a `SqlAlchemyConnector` block saved on a temporary Prefect server
(Prefect's test harness). Each job is submitted *held* (`sbatch --hold`: PENDING, JobHeldUser,
no process until released), so thousands of jobs stay active without thousands of processes.

For each size, a warm-up sweep records the held reason, then between sweeps `--changing` of the
jobs change state: half are released (they run a short script that writes progress and a result,
and end COMPLETED) and half cancelled. Each sweep is `sweep_system("local")`, the task
watch-jobs runs, inside a flow. Per sweep it counts:
  - scheduler calls: every `LocalScheduler` method of the `Scheduler` interface, wrapped;
  - SQL statements on the job store (SQLAlchemy `before_cursor_execute`), reads and writes apart;
  - Prefect API requests (httpx sends to the API URL), block-document reads and log batches apart
    (Prefect logs at WARNING here: a sweep's INFO lines go to the API in batches, not per job);
  - wall time, and wall time without the time spent inside scheduler calls;
  - peak Python memory (tracemalloc), in one extra sweep so that its overhead stays out of the times.
Then `submit_batch` throughput on the same cluster: `--batch` requests of as many users (none
waits for TACC's per-user slot), `wait=False`, records written and jobs submitted per second.

Figures are printed with their ratio to the smallest size, measured in the same run, and each
target of the issue is checked: one scheduler call per sweep; SQL writes proportional to the
jobs that changed; wall time without the scheduler call under 2 s at 1,000 jobs; Prefect API
requests and block loads that do not grow with the jobs.

    .venv/bin/python -m bench.tracking [--sizes 1,100,1000,5000] [--sweeps 3] [--changing 0.02] [--batch 100]
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import shutil
import tempfile
import threading
import time
import tracemalloc
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import wraps
from pathlib import Path
from typing import Any

import httpx
import psycopg
from pydantic import BaseModel
from sqlalchemy import Engine, event

from tacc_jobs.models import JobRecord, JobRequest, JobStatus, Plan
from tacc_jobs.planning.planner import PlanningContext, plan_request
from tacc_jobs.schedulers import JobSubmission, Scheduler
from tacc_jobs.schedulers.job_script import JobPaths, scheduler_job_name
from tacc_jobs.schedulers.local import LocalScheduler
from tacc_jobs.store import JobStore, JobUpdate

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SCHEDULER_METHODS = [
    name for name in vars(Scheduler) if not name.startswith("_") and callable(getattr(Scheduler, name))
]
JOB_SCRIPT = """#!/bin/bash
mkdir -p {output_dir}
echo 0.5 > {progress}
echo '{{"rms": 1.0}}' > {result}
echo 1 > {progress}
"""


@dataclass
class Counters:
    """What the instrumented parts did while `active`."""

    active: bool = False
    calling: threading.local = field(default_factory=threading.local)  # a method calling another is one call
    scheduler_calls: Counter[str] = field(default_factory=Counter)
    scheduler_seconds: float = 0.0
    sql_reads: int = 0
    sql_writes: int = 0
    api_requests: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        self.scheduler_calls.clear()
        self.api_requests.clear()
        self.scheduler_seconds, self.sql_reads, self.sql_writes = 0.0, 0, 0


COUNTERS = Counters()


def instrument(api_url: str) -> None:
    """Count scheduler calls (and their time), SQL statements and Prefect API requests."""
    for name in SCHEDULER_METHODS:
        if not hasattr(LocalScheduler, name):
            continue
        method = getattr(LocalScheduler, name)

        def counted(*args: Any, __method: Callable[..., Any] = method, __name: str = name, **kwargs: Any) -> Any:
            if not COUNTERS.active or getattr(COUNTERS.calling, "depth", 0):
                return __method(*args, **kwargs)
            started = time.perf_counter()
            COUNTERS.calling.depth = 1
            try:
                return __method(*args, **kwargs)
            finally:
                COUNTERS.calling.depth = 0
                COUNTERS.scheduler_calls[__name] += 1
                COUNTERS.scheduler_seconds += time.perf_counter() - started

        setattr(LocalScheduler, name, wraps(method)(counted))

    @event.listens_for(Engine, "before_cursor_execute")
    def count_sql(_connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if COUNTERS.active:
            if statement.lstrip().upper().startswith(("SELECT", "WITH")):
                COUNTERS.sql_reads += 1
            else:
                COUNTERS.sql_writes += 1

    def counting(send: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(send)
        def wrapper(client: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
            if COUNTERS.active and str(request.url).startswith(api_url):
                path = request.url.path.removeprefix(httpx.URL(api_url).path)
                kind = (
                    "block load"
                    if path.startswith("/block_documents") or "/block_documents" in path
                    else "logs"
                    if path.startswith("/logs")
                    else "other"
                )
                COUNTERS.api_requests[kind] += 1
            return send(client, request, *args, **kwargs)

        return wrapper

    httpx.Client.send = counting(httpx.Client.send)  # type: ignore[method-assign]
    send_async = httpx.AsyncClient.send

    @wraps(send_async)
    async def counting_async(client: Any, request: httpx.Request, *args: Any, **kwargs: Any) -> Any:
        if COUNTERS.active and str(request.url).startswith(api_url):
            path = request.url.path.removeprefix(httpx.URL(api_url).path)
            COUNTERS.api_requests[
                "block load" if "/block_documents" in path else "logs" if path.startswith("/logs") else "other"
            ] += 1
        return await send_async(client, request, *args, **kwargs)

    httpx.AsyncClient.send = counting_async  # type: ignore[method-assign]


class Sweep(BaseModel):
    """One measured sweep."""

    jobs: int
    changed: int
    scheduler_calls: int
    sql_reads: int
    sql_writes: int
    api_requests: int
    block_loads: int
    log_posts: int
    seconds: float
    seconds_without_scheduler: float
    peak_mb: float = 0.0


@contextmanager
def measuring() -> Iterator[Counters]:
    COUNTERS.reset()
    COUNTERS.active = True
    try:
        yield COUNTERS
    finally:
        COUNTERS.active = False


def bench_request(user: str) -> JobRequest:
    return JobRequest(
        agent="AlphaCal",
        dataset_id="VLASS2.1.eb123456",
        gpu_count=4,
        max_runtime="01:00:00",
        user_id=user,
        system="local",
    )  # type: ignore[arg-type]


def job_script(paths: JobPaths) -> str:
    """The script a released job runs: progress, then a result, then done."""
    return JOB_SCRIPT.format(**{key: shlex.quote(getattr(paths, key)) for key in ("output_dir", "progress", "result")})


def create_active_jobs(store: JobStore, cluster: LocalScheduler, count: int, plan: Plan) -> list[JobRecord]:
    """`count` jobs recorded and submitted held, QUEUING in the store, as `submit_to_scheduler` leaves them."""
    records = []
    for index in range(count):
        record = store.create(bench_request(f"user{index % 50}"), plan)
        paths = JobPaths.for_job(cluster.scratch_root, record.id, record.dataset_id)
        job_id = cluster.submit(
            JobSubmission(
                name=scheduler_job_name(record.id),
                script=job_script(paths),
                work_dir=paths.work_dir,
                stdout_path=paths.stdout,
                stderr_path=paths.stderr,
                sbatch_args=[*plan.sbatch_args, "--hold"],
            )
        )
        records.append(
            store.transition(
                record.id, JobStatus.QUEUING, JobUpdate(scheduler_job_id=job_id, work_dir=paths.work_dir)
            ).record
        )
    return records


def change_some(cluster: LocalScheduler, held: list[JobRecord], count: int) -> None:
    """Release half of `count` held jobs (they run to COMPLETED), cancel the rest; wait for the ends."""
    chosen = [held.pop() for _ in range(min(count, len(held)))]
    released = chosen[: math.ceil(len(chosen) / 2)]
    for record in chosen[len(released) :]:
        cluster.cancel(record.scheduler_job_id or "")
    for record in released:
        cluster.release(record.scheduler_job_id or "")
    deadline = time.monotonic() + 600
    while any(
        cluster.read_state(record.scheduler_job_id or "")["state"] in ("PENDING", "RUNNING") for record in released
    ):
        if time.monotonic() > deadline:
            raise TimeoutError("released jobs did not end within 600 s")
        time.sleep(0.1)


def one_sweep(jobs: int, changed: int, trace_memory: bool) -> Sweep:
    from tasks.tracking import sweep_system

    if trace_memory:
        tracemalloc.start()
    with measuring() as counters:
        started = time.perf_counter()
        result = sweep_system("local")
        seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace_memory else 0.0
    if trace_memory:
        tracemalloc.stop()
    assert result.active == jobs, f"the sweep saw {result.active} active jobs, not {jobs}"
    return Sweep(
        jobs=jobs,
        changed=result.changed,
        scheduler_calls=sum(counters.scheduler_calls.values()),
        sql_reads=counters.sql_reads,
        sql_writes=counters.sql_writes,
        api_requests=sum(counters.api_requests.values()),
        block_loads=counters.api_requests["block load"],
        log_posts=counters.api_requests["logs"],
        seconds=seconds,
        seconds_without_scheduler=seconds - counters.scheduler_seconds,
        peak_mb=peak,
    )


def bench_size(
    size: int, sweeps: int, changing: float, home: Path, plan: Plan
) -> tuple[list[Sweep], float, Counter[str]]:
    """Sweeps over `size` active jobs on a fresh cluster; the time to create them; one sweep's scheduler calls."""
    from blocks.database import open_job_store

    os.environ["TACC_ORCH_HOME"] = str(home / f"size-{size}")
    cluster = LocalScheduler(home / f"size-{size}" / "local-cluster")
    store = open_job_store()
    started = time.perf_counter()
    held = create_active_jobs(store, cluster, size, plan)
    created_seconds = time.perf_counter() - started
    one_sweep(size, 0, trace_memory=False)  # warm-up: every job's held reason is recorded once
    results, active = [], size
    per_sweep = round(size * changing)
    for number in range(sweeps + 1):
        change_some(cluster, held, per_sweep)
        results.append(one_sweep(active, per_sweep, trace_memory=number == sweeps))
        active -= per_sweep
        calls = Counter(COUNTERS.scheduler_calls)
    for record in held:
        cluster.cancel(record.scheduler_job_id or "")
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM jobs")
    return results, created_seconds, calls


class BatchFigures(BaseModel):
    """One submit-batch run."""

    records_per_second: float
    submitted_per_second: float
    submitted: int
    api_requests: int
    block_loads: int
    sql_statements: int


def bench_batch(requests: int, parallel_limit: int, home: Path) -> BatchFigures:
    """submit-batch of `requests` requests (one user each), not waiting."""
    from blocks.database import open_job_store
    from flows.batch import submit_batch

    os.environ["TACC_ORCH_HOME"] = str(home / "batch")
    batch = [bench_request(f"portal-user-{index}") for index in range(requests)]
    created: list[float] = []
    create = JobStore.create

    def timed_create(store: JobStore, *args: Any, **kwargs: Any) -> JobRecord:
        record = create(store, *args, **kwargs)
        created.append(time.perf_counter())
        return record

    JobStore.create = timed_create  # type: ignore[method-assign]
    try:
        with measuring() as counters:
            started = time.perf_counter()
            records = submit_batch(batch, parallel_limit=parallel_limit, wait=False)
            seconds = time.perf_counter() - started
    finally:
        JobStore.create = create  # type: ignore[method-assign]
    submitted = [record for record in records if record.scheduler_job_id]
    cluster = LocalScheduler(home / "batch" / "local-cluster")
    for record in submitted:
        cluster.cancel(record.scheduler_job_id or "")
    with open_job_store().engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM jobs")
    return BatchFigures(
        records_per_second=len(created) / (created[-1] - started),
        submitted_per_second=len(submitted) / seconds,
        submitted=len(submitted),
        api_requests=sum(counters.api_requests.values()),
        block_loads=counters.api_requests["block load"],
        sql_statements=counters.sql_reads + counters.sql_writes,
    )


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else ("1.00x" if value == 0 else "inf")


def report(sizes: dict[int, list[Sweep]], created: dict[int, float], calls: dict[int, Counter[str]]) -> bool:
    timed = {size: sweeps[:-1] for size, sweeps in sizes.items()}
    mean = {
        size: Sweep(
            jobs=size,
            **{
                name: sum(getattr(s, name) for s in sweeps) / len(sweeps)
                for name in Sweep.model_fields
                if name != "jobs"
            },
        )
        for size, sweeps in timed.items()
    }
    for size, sweeps in sizes.items():
        mean[size].peak_mb = sweeps[-1].peak_mb
    base = mean[min(mean)]
    changing = [row for row in mean.values() if row.changed]
    writes_per_change = changing[0].sql_writes / changing[0].changed if changing else 0.0
    print(
        f"{'active':>7} {'changed':>7} {'sched':>5} {'SQL rd':>7} {'SQL wr':>7} {'wr/chg':>6} {'API':>5} {'blocks':>6} "
        f"{'logs':>5} {'wall s':>7} {'excl. sched s':>13} {'peak MB':>8} {'create s':>8}  scheduler calls of one sweep"
    )
    for size, row in mean.items():
        print(
            f"{size:>7} {row.changed:>7.0f} {row.scheduler_calls:>5.1f} {row.sql_reads:>7.1f} {row.sql_writes:>7.1f} "
            f"{row.sql_writes / max(row.changed, 1):>6.2f} {row.api_requests:>5.1f} {row.block_loads:>6.1f} {row.log_posts:>5.1f} "
            f"{row.seconds:>7.3f} {row.seconds_without_scheduler:>13.3f} {row.peak_mb:>8.1f} {created[size]:>8.1f}  "
            f"{dict(calls[size])}"
        )
    print(f"\nratios to {base.jobs} active job(s), measured in this run:")
    for size, row in mean.items():
        print(
            f"{size:>7}: scheduler calls {ratio(row.scheduler_calls, base.scheduler_calls)}, SQL reads {ratio(row.sql_reads, base.sql_reads)}, "
            f"SQL writes per changed job {ratio(row.sql_writes / max(row.changed, 1), writes_per_change)}, "
            f"API requests without logs {ratio(row.api_requests - row.log_posts, base.api_requests - base.log_posts)}, "
            f"wall without scheduler {ratio(row.seconds_without_scheduler, base.seconds_without_scheduler)} "
            f"({row.seconds_without_scheduler / row.jobs * 1e6:.0f} us per active job), "
            f"peak memory {ratio(row.peak_mb, base.peak_mb)}"
        )
    largest = mean[max(mean)]
    at_1000 = mean.get(1000)
    targets = {
        "1 scheduler call per sweep at any N": all(row.scheduler_calls == 1 for row in mean.values()),
        "SQL writes proportional to the jobs that changed (none without a change; per changed job within 1.5x of the smallest size's)": all(
            row.sql_writes <= 1.5 * writes_per_change * row.changed for row in mean.values()
        ),
        "sweep wall time without the scheduler call < 2 s at 1,000 jobs"
        + ("" if at_1000 else " (not measured: add 1000 to --sizes)"): at_1000 is not None
        and at_1000.seconds_without_scheduler < 2.0,
        "no per-job Prefect API request or block load (API requests without logs within 1.5x of the baseline)": largest.api_requests
        - largest.log_posts
        <= 1.5 * max(base.api_requests - base.log_posts, 1)
        and largest.block_loads <= base.block_loads,
    }
    print()
    for target, met in targets.items():
        print(f"{'MET    ' if met else 'NOT MET'} {target}")
    return all(targets.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,100,1000,5000", help="active jobs, comma-separated")
    parser.add_argument("--sweeps", type=int, default=3, help="timed sweeps per size (plus one for memory)")
    parser.add_argument(
        "--changing", type=float, default=0.02, help="fraction of the jobs that change state between sweeps"
    )
    parser.add_argument("--batch", type=int, default=100, help="requests in the submit-batch throughput run (0: skip)")
    parser.add_argument("--parallel-limit", type=int, default=16, help="submit-batch's parallel_limit")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    home = Path(tempfile.mkdtemp(prefix="tacc-bench-tracking-"))
    os.environ.update(
        {"TACC_ORCH_HOME": str(home), "TACC_ORCH_POLL_MIN_SECONDS": "0.2", "PREFECT_LOGGING_LEVEL": "WARNING"}
    )
    name = f"tacc_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        run(sizes, args, home, f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}")
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        shutil.rmtree(home, ignore_errors=True)


def run(sizes: list[int], args: argparse.Namespace, home: Path, database_url: str) -> None:
    from prefect import flow
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness
    from prefect_sqlalchemy import SqlAlchemyConnector

    with prefect_test_harness(server_startup_timeout=60):
        block = f"tacc-bench-{uuid.uuid4().hex[:8]}"
        SqlAlchemyConnector(connection_info=database_url).save(block)
        os.environ["TACC_ORCH_DATABASE_BLOCK"] = block
        instrument(str(PREFECT_API_URL.value()))
        plan = plan_request(bench_request("planner"), PlanningContext())

        @flow(name="bench-tracking")
        def sweeps() -> tuple[dict[int, list[Sweep]], dict[int, float], dict[int, Counter[str]]]:
            results, created, calls = {}, {}, {}
            for size in sizes:
                results[size], created[size], calls[size] = bench_size(size, args.sweeps, args.changing, home, plan)
                print(f"  {size} active jobs: done", flush=True)
            return results, created, calls

        results, created, calls = sweeps()
        met = report(results, created, calls)
        if args.batch:
            batch = bench_batch(args.batch, args.parallel_limit, home)
            print(
                f"\nsubmit-batch, {args.batch} requests of {args.batch} users, parallel_limit={args.parallel_limit}, wait=False: "
                f"{batch.records_per_second:,.1f} records written/s, {batch.submitted_per_second:,.1f} jobs recorded and submitted/s; "
                f"per job: {batch.api_requests / args.batch:.1f} Prefect API requests ({batch.block_loads / args.batch:.1f} block loads), "
                f"{batch.sql_statements / args.batch:.1f} SQL statements"
            )
    print("\nall targets met" if met else "\nsome targets NOT met")


if __name__ == "__main__":
    main()
