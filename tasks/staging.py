"""Staging on the embedded default: copy a dataset into the cluster's scratch, checksummed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from pydantic import BaseModel

MANIFEST_NAME = ".tacc-manifest.json"


class StagingError(RuntimeError):
    """The dataset cannot be staged; the message says what is missing or wrong."""


class StagedDataset(BaseModel):
    """A dataset in scratch, with the checksums it was verified against."""

    dataset_id: str
    path: str
    files: int
    bytes: int
    digest: str
    copied: bool


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dataset_manifest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under `root` (the manifest itself excluded)."""
    manifest = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise StagingError(f"{path}: symbolic links are not staged; copy the file in")
        if path.is_file() and path.name != MANIFEST_NAME:
            try:
                manifest[path.relative_to(root).as_posix()] = file_sha256(path)
            except PermissionError as error:
                raise StagingError(f"{path}: not readable ({error.strerror})") from None
    return manifest


def source_dir(dataset_root: Path, dataset_id: str) -> Path:
    """The dataset's source directory, checked to exist, sit inside the root and hold files.

    Raises:
        StagingError: When the dataset is missing, empty, or outside the dataset root.
    """
    root = dataset_root.resolve()
    source = (root / dataset_id).resolve()
    if source.parent != root:
        raise StagingError(f"dataset_id {dataset_id!r} points outside the dataset root {root}")
    if not source.is_dir():
        raise StagingError(f"dataset {dataset_id!r} not found: no directory {source}")
    if not any(path.is_file() for path in source.rglob("*")):
        raise StagingError(f"dataset {dataset_id!r} is empty: {source} holds no files")
    return source


def stage_local(dataset_root: Path, dataset_id: str, destination: Path) -> StagedDataset:
    """Copy `dataset_root/dataset_id` to `destination`, verify every checksum, then swap it in.

    Skips the copy when the destination already holds the same manifest. The copy goes to a
    sibling directory first, so a failure never leaves a half-staged dataset in place.

    Example:
        ```python
        staged = stage_local(Path("datasets"), "VLASS2.1.eb123456", Path("/scratch/datasets/VLASS2.1.eb123456"))
        ```
    """
    source = source_dir(dataset_root, dataset_id)
    manifest = dataset_manifest(source)
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    size = sum((source / name).stat().st_size for name in manifest)
    staged = StagedDataset(dataset_id=dataset_id, path=str(destination), files=len(manifest), bytes=size, digest=digest, copied=False)
    recorded = destination / MANIFEST_NAME
    if recorded.exists() and json.loads(recorded.read_text()) == manifest and dataset_manifest(destination) == manifest:
        return staged
    partial = destination.with_name(f"{destination.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(source, partial)
        copied = dataset_manifest(partial)
        corrupted = sorted(name for name, checksum in manifest.items() if copied.get(name) != checksum)
        if corrupted:
            raise StagingError(f"checksum mismatch after copy: {', '.join(corrupted)}")
        (partial / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1, sort_keys=True))
        shutil.rmtree(destination, ignore_errors=True)
        os.replace(partial, destination)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return staged.model_copy(update={"copied": True})
