"""Staging on the embedded default: survey, checksummed copies, skips, repairs, advice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tacc_jobs.exceptions import StagingError
from tacc_jobs.staging.datasets import (
    DatasetInventory,
    inspect_dataset,
    layout_advice,
    stage,
    survey_dataset,
)
from tacc_jobs.staging.transfer import MANIFEST_NAME, LocalCopy, TransferStats


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    (root / "ds1" / "sub").mkdir(parents=True)
    (root / "ds1" / "chunk-000.csv").write_text("channel,real,imag\n1,1,1\n")
    (root / "ds1" / "sub" / "notes.txt").write_text("observing log\n")
    return root


def test_stage_then_restage_copies_nothing(source: Path, tmp_path: Path) -> None:
    destination = tmp_path / "scratch" / "ds1"
    inventory = inspect_dataset(source, "ds1")
    first = stage(inventory, LocalCopy(), str(destination))
    assert first.copied and first.files == 2 and first.bytes == 38 and first.transfer.files_transferred == 2
    assert (destination / "sub" / "notes.txt").read_text() == "observing log\n"
    assert (destination / MANIFEST_NAME).exists()
    mtime = (destination / "chunk-000.csv").stat().st_mtime_ns
    second = stage(inspect_dataset(source, "ds1"), LocalCopy(), str(destination))
    assert not second.copied and second.transfer is None and second.digest == first.digest
    assert (destination / "chunk-000.csv").stat().st_mtime_ns == mtime


def test_damaged_copy_is_detected_and_repaired_changed_source_restaged(source: Path, tmp_path: Path) -> None:
    destination = tmp_path / "scratch" / "ds1"
    first = stage(inspect_dataset(source, "ds1"), LocalCopy(), str(destination))
    (destination / "chunk-000.csv").write_text("damaged")
    repaired = stage(inspect_dataset(source, "ds1"), LocalCopy(), str(destination))
    assert repaired.copied and repaired.repaired == ["chunk-000.csv"] and repaired.transfer.files_transferred == 1
    assert (destination / "chunk-000.csv").read_text() == "channel,real,imag\n1,1,1\n"
    (source / "ds1" / "chunk-001.csv").write_text("channel,real,imag\n")
    again = stage(inspect_dataset(source, "ds1"), LocalCopy(), str(destination))
    assert again.copied and again.digest != first.digest and again.files == 3 and again.repaired == []


class CorruptingCopy(LocalCopy):
    """A transfer that damages a file on the way (a bad link, a bad disk)."""

    def push(self, source: Path, destination: str, on_progress=None) -> TransferStats:
        stats = super().push(source, destination, on_progress)
        (Path(destination) / "chunk-000.csv").write_text("bit rot")
        return stats


def test_corruption_in_transfer_fails_and_is_never_taken_as_staged(source: Path, tmp_path: Path) -> None:
    destination = tmp_path / "scratch" / "ds1"
    with pytest.raises(StagingError, match="checksum mismatch in localhost:.*after transfer: chunk-000.csv"):
        stage(inspect_dataset(source, "ds1"), CorruptingCopy(), str(destination))
    assert not (destination / MANIFEST_NAME).exists()
    assert stage(inspect_dataset(source, "ds1"), LocalCopy(), str(destination)).repaired == ["chunk-000.csv"]


@pytest.mark.parametrize(
    ("dataset_id", "message"), [("../../etc", "outside the dataset root"), ("missing", "not found")]
)
def test_refusals(source: Path, dataset_id: str, message: str) -> None:
    with pytest.raises(StagingError, match=message):
        survey_dataset(source, dataset_id)


def test_every_problem_is_reported_before_anything_moves(source: Path) -> None:
    (source / "empty").mkdir()
    with pytest.raises(StagingError, match="is empty"):
        survey_dataset(source, "empty")
    (source / "ds1" / "link").symlink_to("/etc/hostname")
    (source / "ds1" / "secret").write_text("x")
    (source / "ds1" / "secret").chmod(0)
    with pytest.raises(StagingError, match="link: symbolic link") as raised:
        survey_dataset(source, "ds1")
    if os.geteuid() != 0:  # root reads everything
        assert "secret: not readable" in str(raised.value)


def test_layout_advice() -> None:
    many_small = DatasetInventory(dataset_id="d", source="/x", manifest={}, sizes={f"f{i}": 100 for i in range(1500)})
    huge = DatasetInventory(dataset_id="d", source="/x", manifest={}, sizes={"cube.h5": 20 << 30})
    assert "pack them (tar, or HDF5)" in layout_advice(many_small)[0]
    assert "lfs setstripe" in layout_advice(huge)[0]
    assert layout_advice(DatasetInventory(dataset_id="d", source="/x", manifest={}, sizes={"a": 5 << 20})) == []
