"""Staging: check a dataset at its source, estimate its transfer, move it, verify it.

Plain code over a `Transfer`; the Prefect task that queues and records staging is in
`tasks/staging.py`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tacc_jobs.exceptions import StagingError
from tacc_jobs.staging.transfer import Transfer, TransferStats, file_sha256

MANY_SMALL_FILES = 1000
SMALL_FILE_BYTES = 1 << 20
LARGE_FILE_BYTES = 10 << 30


class DatasetInventory(BaseModel):
    """A dataset at its source: where, which files with which checksums, how big."""

    dataset_id: str
    source: str
    manifest: dict[str, str]
    sizes: dict[str, int]

    @property
    def digest(self) -> str:
        """One hash of the whole dataset's content and layout."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()

    @property
    def bytes(self) -> int:
        """Total size in bytes."""
        return sum(self.sizes.values())


class StagedDataset(BaseModel):
    """A dataset in scratch, verified against its manifest."""

    dataset_id: str
    path: str
    files: int
    bytes: int
    digest: str
    copied: bool
    transfer: TransferStats | None = None
    repaired: list[str] = []


def survey_dataset(dataset_root: Path, dataset_id: str) -> DatasetInventory:
    """Check the dataset at its source and size it (no checksums), reporting every problem at once.

    Raises:
        StagingError: The dataset is missing, outside the root, empty, or has unreadable files
            or symbolic links (all of them listed).

    Example:
        ```python
        survey_dataset(Path("datasets"), "VLASS2.1.eb123456").bytes  # 259042
        ```
    """
    root = dataset_root.resolve()
    source = (root / dataset_id).resolve()
    if source.parent != root:
        raise StagingError(f"dataset_id {dataset_id!r} points outside the dataset root {root}")
    if not source.is_dir():
        raise StagingError(f"dataset {dataset_id!r} not found: no directory {source}")
    sizes, problems = {}, []
    for path in sorted(source.rglob("*")):
        name = path.relative_to(source).as_posix()
        if path.is_symlink():
            problems.append(f"{name}: symbolic link (copy the file in)")
        elif path.is_file():
            if not os.access(path, os.R_OK):
                problems.append(f"{name}: not readable")
            sizes[name] = path.stat().st_size
    if problems:
        raise StagingError(f"dataset {dataset_id!r} cannot be staged: " + "; ".join(problems))
    if not sizes:
        raise StagingError(f"dataset {dataset_id!r} is empty: {source} holds no files")
    return DatasetInventory(dataset_id=dataset_id, source=str(source), manifest={}, sizes=sizes)


def inspect_dataset(dataset_root: Path, dataset_id: str) -> DatasetInventory:
    """Survey the dataset, then checksum every file (the manifest staging verifies against)."""
    inventory = survey_dataset(dataset_root, dataset_id)
    source = Path(inventory.source)
    return inventory.model_copy(update={"manifest": {name: file_sha256(source / name) for name in inventory.sizes}})


def layout_advice(inventory: DatasetInventory) -> list[str]:
    """What would make the dataset faster to move and to read on TACC's Lustre scratch."""
    advice = []
    small = sum(1 for size in inventory.sizes.values() if size < SMALL_FILE_BYTES)
    if small >= MANY_SMALL_FILES:
        advice.append(
            f"{small} files under 1 MiB: pack them (tar, or HDF5) before transfer; Lustre and rsync pay per file."
        )
    large = [name for name, size in inventory.sizes.items() if size >= LARGE_FILE_BYTES]
    if large:
        advice.append(
            f"{len(large)} file(s) of 10 GiB or more: stripe the scratch directory first "
            "(lfs setstripe -c 8 <dir>) so reads spread over several storage targets."
        )
    return advice


def transfer_seconds(size: int, bandwidth: float) -> float:
    """Expected transfer time of `size` bytes at `bandwidth` bytes per second."""
    return size / bandwidth if bandwidth > 0 else 0.0


def stage(
    inventory: DatasetInventory,
    transfer: Transfer,
    destination: str,
    on_progress: Callable[[float], None] | None = None,
) -> StagedDataset:
    """Make `destination` hold the dataset, verified file by file against the source's checksums.

    Nothing moves when the destination already matches (its manifest and its checksums). Files
    that differ (changed at the source, or damaged in scratch) are transferred again. The
    manifest is written last, so an interrupted staging is never taken for a complete one.

    Raises:
        StagingError: When the files in scratch still differ from the source after the transfer.
    """
    staged = StagedDataset(
        dataset_id=inventory.dataset_id,
        path=destination,
        files=len(inventory.manifest),
        bytes=inventory.bytes,
        digest=inventory.digest,
        copied=False,
    )
    present = transfer.checksums(destination)
    differing = sorted(name for name, checksum in inventory.manifest.items() if present.get(name) != checksum)
    if not differing and transfer.read_manifest(destination) == inventory.manifest:
        if on_progress:
            on_progress(1.0)
        return staged
    stats = transfer.push(Path(inventory.source), destination, on_progress)
    after = transfer.checksums(destination)
    corrupted = sorted(name for name, checksum in inventory.manifest.items() if after.get(name) != checksum)
    if corrupted:
        raise StagingError(f"checksum mismatch in {transfer.host}:{destination} after transfer: {', '.join(corrupted)}")
    transfer.write_manifest(destination, inventory.manifest)
    repaired = [name for name in differing if name in present]
    return staged.model_copy(update={"copied": True, "transfer": stats, "repaired": repaired})
