"""AlphaCal demo agent: flags RFI in a visibility dataset chunk by chunk, reporting progress.

Standard library only, so it runs anywhere a job runs. Reads `chunk-*.csv` files with columns
`channel,real,imag`; flags samples whose amplitude exceeds k x the chunk's median amplitude
(k set by `rfi_strategy`); writes progress (0-1) after every chunk and `result.json` at the end,
with the GPUs it saw and its node. In a packed allocation the launcher sets `TACC_GPU_COUNT`;
then the agent refuses to run unless `CUDA_VISIBLE_DEVICES` lists exactly that many GPUs.

Example:
    python alphacal.py --dataset DIR --output OUT --params params.json --progress OUT/progress
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import socket
import statistics
import sys
import time
from collections.abc import Mapping
from pathlib import Path

THRESHOLDS = {"low": 8.0, "medium": 5.0, "high": 3.0, "high_sensitivity": 2.0}


def write_progress(path: Path, fraction: float) -> None:
    """Replace the progress file atomically so a reader never sees half a number."""
    partial = path.with_suffix(".tmp")
    partial.write_text(f"{fraction:.4f}\n")
    os.replace(partial, path)


def gpu_placement(environ: Mapping[str, str]) -> dict[str, object]:
    """The GPU ids the job sees and its node; a ValueError when `TACC_GPU_COUNT` is set and
    `CUDA_VISIBLE_DEVICES` does not list exactly that many distinct ids.

    Example:
        >>> gpu_placement({"TACC_GPU_COUNT": "2", "CUDA_VISIBLE_DEVICES": "0,3", "TACC_NODE": "c001"})
        {'visible_gpus': ['0', '3'], 'node': 'c001'}
        >>> gpu_placement({"TACC_GPU_COUNT": "2", "CUDA_VISIBLE_DEVICES": "1,1"})
        Traceback (most recent call last):
        ...
        ValueError: TACC_GPU_COUNT=2 but CUDA_VISIBLE_DEVICES='1,1' lists 1 distinct GPU id(s)
        >>> gpu_placement({})["visible_gpus"] is None
        True
    """
    devices = environ.get("CUDA_VISIBLE_DEVICES")
    ids = None if devices is None else [device.strip() for device in devices.split(",") if device.strip()]
    expected = environ.get("TACC_GPU_COUNT")
    if expected and (ids is None or len(ids) != len(set(ids)) or str(len(ids)) != expected.strip()):
        raise ValueError(
            f"TACC_GPU_COUNT={expected} but CUDA_VISIBLE_DEVICES={devices!r} lists "
            f"{len(set(ids or []))} distinct GPU id(s)"
        )
    return {"visible_gpus": ids, "node": environ.get("TACC_NODE") or socket.gethostname()}


def process_chunk(path: Path, threshold: float) -> tuple[int, int, float]:
    """Count samples and flagged samples of one chunk; return the RMS of the kept amplitudes."""
    with path.open(newline="") as handle:
        amplitudes = [math.hypot(float(row["real"]), float(row["imag"])) for row in csv.DictReader(handle)]
    limit = threshold * statistics.median(amplitudes)
    kept = [amp for amp in amplitudes if amp <= limit]
    rms = math.sqrt(sum(amp * amp for amp in kept) / len(kept)) if kept else 0.0
    return len(amplitudes), len(amplitudes) - len(kept), rms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--progress", type=Path, required=True)
    args = parser.parse_args(argv)

    try:
        placement = gpu_placement(os.environ)
    except ValueError as error:
        print(f"alphacal: wrong GPUs: {error}", file=sys.stderr)
        return 3
    params = json.loads(args.params.read_text())
    strategy = params.get("rfi_strategy", "medium")
    step_seconds = float(params.get("step_seconds", 1.0))
    chunks = sorted(args.dataset.glob("chunk-*.csv"))
    if not chunks:
        print(f"alphacal: no chunk-*.csv files in {args.dataset}", file=sys.stderr)
        return 2
    args.output.mkdir(parents=True, exist_ok=True)
    write_progress(args.progress, 0.0)
    samples = flagged = 0
    rms_values = []
    for index, chunk in enumerate(chunks, start=1):
        count, bad, rms = process_chunk(chunk, THRESHOLDS[strategy])
        samples, flagged = samples + count, flagged + bad
        rms_values.append(rms)
        time.sleep(step_seconds)
        write_progress(args.progress, index / len(chunks))
        print(f"alphacal: chunk {index}/{len(chunks)} {chunk.name}: flagged {bad}/{count}", flush=True)
    result = {
        "agent": "AlphaCal",
        "rfi_strategy": strategy,
        "chunks": len(chunks),
        "samples": samples,
        "flagged_fraction": round(flagged / samples, 6),
        "rms_after_flagging": round(statistics.fmean(rms_values), 6),
        **placement,
    }
    (args.output / "result.json").write_text(json.dumps(result, indent=2))
    print(f"alphacal: done: {json.dumps(result)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
