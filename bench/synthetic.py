"""Synthetic sacct output: jobs with their steps, array tasks, and a sprinkle of bad rows."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

PARTITIONS = [("gpu-a100", 3), ("gpu-h100", 2), ("gpu-a100-small", 1)]
STATES = ["COMPLETED"] * 8 + ["FAILED", "CANCELLED by 1001", "TIMEOUT", "OUT_OF_MEMORY"]
ACCOUNTS = ["ml-research", "data-science", "ai-platform"]


def synthetic_sacct_rows(jobs: int, seed: int = 1, start: datetime | None = None, bad_every: int = 0) -> Iterator[list[str]]:
    """`jobs` jobs as `sacct --parsable2` rows: each job row is followed by its `.batch` and
    `.extern` steps (so about 3 rows per job); every `bad_every`-th job has an End before its Start."""
    rng = random.Random(seed)
    origin = start or datetime(2026, 11, 1, tzinfo=timezone.utc)
    for index in range(jobs):
        partition, gpus_per_node = PARTITIONS[index % len(PARTITIONS)]
        nodes = rng.choice([1, 1, 2, 4]) if partition == "gpu-a100" else 1
        begin = origin + timedelta(seconds=rng.randrange(14 * 86400))
        elapsed = rng.randrange(60, 12 * 3600)
        end = begin + timedelta(seconds=elapsed)
        if bad_every and index % bad_every == bad_every - 1:
            end = begin - timedelta(hours=1)
        job_id = f"{1_000_000 + index}" if index % 10 else f"{1_000_000 + index}_{index % 7}"
        clock = f"{elapsed // 3600:02d}:{elapsed % 3600 // 60:02d}:{elapsed % 60:02d}"
        times = [(begin - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"), begin.strftime("%Y-%m-%dT%H:%M:%S"),
                 end.strftime("%Y-%m-%dT%H:%M:%S")]
        state = STATES[rng.randrange(len(STATES))]
        exit_code = "0:0" if state == "COMPLETED" else "1:0"
        tres = f"billing={nodes},cpu={nodes * 128},gres/gpu={nodes * gpus_per_node},node={nodes}"
        yield [job_id, f"agent-{index % 5}", f"user{index % 40}", ACCOUNTS[index % 3], partition, state, exit_code,
               *times, clock, str(nodes), tres]
        for step in ("batch", "extern"):
            yield [f"{job_id}.{step}", step, "", ACCOUNTS[index % 3], "", state.split()[0], exit_code, *times, clock,
                   "1", "cpu=128,node=1"]
