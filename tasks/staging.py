"""Staging as a Prefect task: queue by priority, move the dataset, verify, record status."""

from __future__ import annotations

import posixpath
import re
import time
from datetime import datetime, timezone

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from blocks.clusters import scheduler_for, transfer_for, transfer_host
from blocks.database import open_staging_store
from tacc_jobs.exceptions import StagingError
from tacc_jobs.settings import get_settings
from tacc_jobs.staging.datasets import (
    inspect_dataset,
    layout_advice,
    stage,
    transfer_seconds,
)
from tacc_jobs.store import DatasetStaging, StagingStatus
from tasks.policies import ONCE_PER_FLOW_RUN, cluster_task

SLOT_POLL_SECONDS = 1.0


def dataset_destination(system: str, dataset_id: str) -> str:
    """Where a dataset lives in a system's scratch: `<scratch_root>/datasets/<dataset_id>`."""
    return posixpath.join(scheduler_for(system).scratch_root, "datasets", dataset_id)


def artifact_key(*parts: str) -> str:
    """An artifact key from free text: lower-case letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")


@cluster_task(cache_policy=ONCE_PER_FLOW_RUN, persist_result=True)
def stage_dataset_to_scratch(dataset_id: str, system: str, priority: str = "normal") -> DatasetStaging:
    """Stage a dataset to a system's scratch: checked, estimated, queued by priority, moved
    (rsync over the multiplexed SSH connection at TACC), verified by checksum, recorded.

    Example:
        ```python
        stage_dataset_to_scratch("VLASS2.1.eb123456", "ls6", priority="high").status  # STAGED
        ```
    """
    logger = get_run_logger()
    settings = get_settings()
    store = open_staging_store()
    store.request(system, dataset_id, priority)
    try:
        inventory = inspect_dataset(settings.dataset_root, dataset_id)
    except StagingError as error:
        store.update(
            system, dataset_id, status=StagingStatus.FAILED, reason=str(error), finished_at=datetime.now(timezone.utc)
        )
        raise
    transfer = transfer_for(system)
    measured = store.bandwidth(transfer_host(system))
    bandwidth = measured or settings.default_bandwidth_mb_per_s * 1e6
    logger.info(
        "Dataset %s: %d files, %d bytes; about %.0f s to %s at %.1f MB/s (%s)",
        dataset_id,
        len(inventory.sizes),
        inventory.bytes,
        transfer_seconds(inventory.bytes, bandwidth),
        system,
        bandwidth / 1e6,
        "measured" if measured else "default",
    )
    for advice in layout_advice(inventory):
        logger.warning("Layout advice for %s: %s", dataset_id, advice)
    waiting_logged = False
    while not store.try_start(system, dataset_id, settings.staging_slots_per_system):
        current = store.get(system, dataset_id)
        if current is not None and current.status in (StagingStatus.STAGED, StagingStatus.FAILED):
            store.request(system, dataset_id, priority)  # another stager finished it: ours only verifies
            continue
        if not waiting_logged:
            logger.info(
                "Waiting for a staging slot on %s (%d request(s) ahead, or the dataset is being staged)",
                system,
                store.waiting_ahead(system, dataset_id),
            )
            waiting_logged = True
        time.sleep(SLOT_POLL_SECONDS)
    artifact_id = create_progress_artifact(
        progress=0.0, key=artifact_key("staging", system, dataset_id), description=f"Staging {dataset_id} to {system}"
    )
    last_reported = [0.0]

    def on_progress(fraction: float) -> None:
        if fraction - last_reported[0] >= 0.05 or fraction == 1.0:
            last_reported[0] = fraction
            update_progress_artifact(artifact_id, progress=fraction * 100)
            store.update(system, dataset_id, progress=fraction)

    try:
        staged = stage(inventory, transfer, dataset_destination(system, dataset_id), on_progress)
    except Exception as error:
        store.update(
            system, dataset_id, status=StagingStatus.FAILED, reason=str(error), finished_at=datetime.now(timezone.utc)
        )
        raise
    store.update(
        system,
        dataset_id,
        status=StagingStatus.STAGED,
        reason=None,
        progress=1.0,
        path=staged.path,
        digest=staged.digest,
        files=staged.files,
        bytes=staged.bytes,
        finished_at=datetime.now(timezone.utc),
    )
    if staged.transfer is not None and staged.transfer.bytes_transferred:
        store.record_transfer(transfer.host, staged.transfer.bytes_transferred, staged.transfer.seconds)
    if staged.repaired:
        logger.warning(
            "Repaired %d file(s) of %s that differed in scratch: %s",
            len(staged.repaired),
            dataset_id,
            ", ".join(staged.repaired),
        )
    logger.info(
        "Dataset %s %s at %s:%s",
        dataset_id,
        "staged" if staged.copied else "already staged, unchanged",
        system,
        staged.path,
    )
    result = store.get(system, dataset_id)
    assert result is not None
    return result
