"""Synthetic sacct output: jobs with their steps, array tasks, requeued attempts, and a sprinkle of bad rows."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

PARTITIONS = [("gpu-a100", 3), ("gpu-h100", 2), ("gpu-a100-small", 1)]
STATES = ["COMPLETED"] * 8 + ["FAILED", "CANCELLED by 1001", "TIMEOUT", "OUT_OF_MEMORY"]
ACCOUNTS = ["ml-research", "data-science", "ai-platform"]
REQUEUE_DELAY = timedelta(seconds=121)  # Slurm holds a requeued job for its requeue delay + 1 s


def _clock(seconds: int) -> str:
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")  # naive UTC, as sacct prints it with TZ=UTC


def _attempt(
    job_id: str,
    index: int,
    state: str,
    submit: datetime,
    eligible: datetime,
    begin: datetime,
    end: datetime,
    partition: str,
    nodes: int,
    gpus_per_node: int,
) -> Iterator[list[str]]:
    """One attempt as sacct prints it: the job row, then its `.batch` and `.extern` steps."""
    elapsed = max(int((end - begin).total_seconds()), 0)
    exit_code = "0:0" if state == "COMPLETED" else "1:0"
    account = ACCOUNTS[index % 3]
    tres = f"billing={nodes},cpu={nodes * 128},gres/gpu:{partition.split('-')[1]}={nodes * gpus_per_node},gres/gpu={nodes * gpus_per_node},mem={nodes * 250}G,node={nodes}"
    times = [_time(begin), _time(begin), _time(begin), _time(end), _clock(elapsed)]
    yield [
        job_id,
        f"user{index % 40}",
        account,
        partition,
        state,
        exit_code,
        _time(submit),
        _time(eligible),
        *times[2:],
        "12:00:00",
        str(nodes),
        tres,
        "",
        "",
        f"agent-{index % 5}",
    ]
    for step, cpu_share in (("batch", 40), ("extern", 0)):
        usage = f"cpu={_clock(elapsed * cpu_share)},energy=0,fs/disk=2386,mem={elapsed % 9000}M,pages=0,vmem=5908K"
        yield [
            f"{job_id}.{step}",
            "",
            account,
            "",
            state.split()[0],
            exit_code,
            *times,
            "",
            "1",
            "cpu=128,mem=250G,node=1",
            usage,
            f"{elapsed % 9000 + 17}M" if cpu_share else "1020K",
            step,
        ]


def synthetic_sacct_rows(
    jobs: int, seed: int = 1, start: datetime | None = None, bad_every: int = 0, requeue_every: int = 0
) -> Iterator[list[str]]:
    """`jobs` jobs as `sacct --parsable2 --duplicates` rows in `SACCT_FIELDS` order: each job row is
    followed by its `.batch` and `.extern` steps (so about 3 rows per job); every `bad_every`-th
    job has an End before its Start; every `requeue_every`-th job first ran an attempt that was
    requeued (its own rows, state REQUEUED, before the final attempt's)."""
    rng = random.Random(seed)
    origin = (start or datetime(2026, 11, 1, tzinfo=timezone.utc)).astimezone(timezone.utc).replace(tzinfo=None)
    for index in range(jobs):
        partition, gpus_per_node = PARTITIONS[index % len(PARTITIONS)]
        nodes = rng.choice([1, 1, 2, 4]) if partition == "gpu-a100" else 1
        begin = origin + timedelta(seconds=rng.randrange(14 * 86400))
        end = begin + timedelta(seconds=rng.randrange(60, 12 * 3600))
        if bad_every and index % bad_every == bad_every - 1:
            end = begin - timedelta(hours=1)
        job_id = f"{1_000_000 + index}" if index % 10 else f"{1_000_000 + index}_{index % 7}"
        state = STATES[rng.randrange(len(STATES))]
        submit = eligible = begin - timedelta(minutes=5)
        if requeue_every and index % requeue_every == requeue_every // 2:
            requeued_at = begin + timedelta(minutes=20)
            yield from _attempt(
                job_id, index, "REQUEUED", submit, eligible, begin, requeued_at, partition, nodes, gpus_per_node
            )
            submit, eligible = requeued_at, requeued_at + REQUEUE_DELAY
            begin, end = eligible, max(end, eligible + timedelta(minutes=1))
        yield from _attempt(job_id, index, state, submit, eligible, begin, end, partition, nodes, gpus_per_node)
