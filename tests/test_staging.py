"""Staging on the embedded default: checksummed copies, skipped when unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.staging import MANIFEST_NAME, StagingError, stage_local


@pytest.fixture
def source(tmp_path: Path) -> Path:
    root = tmp_path / "datasets"
    (root / "ds1" / "sub").mkdir(parents=True)
    (root / "ds1" / "chunk-000.csv").write_text("channel,real,imag\n1,1,1\n")
    (root / "ds1" / "sub" / "notes.txt").write_text("observing log\n")
    return root


def test_stage_then_restage_copies_nothing(source: Path, tmp_path: Path) -> None:
    destination = tmp_path / "scratch" / "ds1"
    first = stage_local(source, "ds1", destination)
    assert first.copied and first.files == 2 and first.bytes == 38
    assert (destination / "sub" / "notes.txt").read_text() == "observing log\n"
    assert (destination / MANIFEST_NAME).exists()
    mtime = (destination / "chunk-000.csv").stat().st_mtime_ns
    second = stage_local(source, "ds1", destination)
    assert not second.copied and second.digest == first.digest
    assert (destination / "chunk-000.csv").stat().st_mtime_ns == mtime


def test_changed_source_or_damaged_copy_is_staged_again(source: Path, tmp_path: Path) -> None:
    destination = tmp_path / "scratch" / "ds1"
    first = stage_local(source, "ds1", destination)
    (destination / "chunk-000.csv").write_text("damaged")
    assert stage_local(source, "ds1", destination).copied
    assert (destination / "chunk-000.csv").read_text() == "channel,real,imag\n1,1,1\n"
    (source / "ds1" / "chunk-001.csv").write_text("channel,real,imag\n")
    again = stage_local(source, "ds1", destination)
    assert again.copied and again.digest != first.digest and again.files == 3


def test_corruption_during_copy_is_detected_and_nothing_left(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_copytree = shutil.copytree

    def corrupting_copy(src: Path, dst: Path, *args: object, **kwargs: object) -> None:
        real_copytree(src, dst, *args, **kwargs)
        if (Path(dst) / "chunk-000.csv").exists():
            (Path(dst) / "chunk-000.csv").write_text("bit rot")

    monkeypatch.setattr("tasks.staging.shutil.copytree", corrupting_copy)
    destination = tmp_path / "scratch" / "ds1"
    with pytest.raises(StagingError, match="checksum mismatch after copy: chunk-000.csv"):
        stage_local(source, "ds1", destination)
    assert not destination.exists()
    assert list((tmp_path / "scratch").iterdir()) == []


@pytest.mark.parametrize(("dataset_id", "message"), [("../../etc", "outside the dataset root"), ("missing", "not found")])
def test_refusals(source: Path, tmp_path: Path, dataset_id: str, message: str) -> None:
    with pytest.raises(StagingError, match=message):
        stage_local(source, dataset_id, tmp_path / "scratch" / "x")


def test_empty_dataset_is_refused(source: Path, tmp_path: Path) -> None:
    (source / "empty").mkdir()
    with pytest.raises(StagingError, match="is empty"):
        stage_local(source, "empty", tmp_path / "scratch" / "empty")
