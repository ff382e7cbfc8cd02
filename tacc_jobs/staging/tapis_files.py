"""Staging through the Tapis Files API: the `Transfer` interface without an SSH login.

Only files whose content differs from what is in scratch move: uploaded one by one
(multipart), or, for a dataset of `transfer_threshold_bytes` or more that Tapis can also reach
at `source_url` (an archive such as Corral, `tapis://<system>/<dir>` holding one directory per
dataset), by a transfer request Tapis carries out system to system, followed to its end. Checksums are computed from the bytes the Files API returns (it has no checksum
call), so verification reads every file back once. The manifest is written last, as with
rsync, so an interrupted staging is never taken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from pathlib import Path

from tacc_jobs.exceptions import StagingError
from tacc_jobs.staging.transfer import (
    MANIFEST_NAME,
    ProgressCallback,
    TransferStats,
    local_checksums,
)
from tacc_jobs.tapis.client import TapisClient, relative_path
from tacc_jobs.tapis.models import TransferElement


def files_host(base_url: str, system_id: str) -> str:
    """The name transfers to a Tapis system are measured under: tenant and system.

    Example:
        >>> files_host("https://tacc.tapis.io/", "ls6")
        'tacc.tapis.io/ls6'
    """
    return f"{base_url.split('://', 1)[-1].rstrip('/')}/{system_id}"


class TapisFiles:
    """Moves datasets to an execution system's scratch through the Files API.

    Example:
        ```python
        files = TapisFiles(TapisCredentials.load("ls6").get_client(), "ls6")
        stage(inspect_dataset(Path("datasets"), "VLASS2.1.eb123456"), files, "/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")
        ```
    """

    def __init__(
        self,
        client: TapisClient,
        system_id: str,
        source_url: str | None = None,
        transfer_threshold_bytes: int = 1 << 30,
        poll_seconds: float = 2.0,
    ) -> None:
        self.client, self.system_id = client, system_id
        self.source_url, self.transfer_threshold_bytes, self.poll_seconds = (
            source_url,
            transfer_threshold_bytes,
            poll_seconds,
        )
        self.host = files_host(client.base_url, system_id)
        self._seen: dict[str, dict[str, str]] = {}  # destination -> checksums last read back

    def push(self, source: Path, destination: str, on_progress: ProgressCallback | None = None) -> TransferStats:
        """Upload the files of `source` whose content differs from the last checksums read back.

        Example:
            ```python
            files.push(Path("datasets/VLASS2.1.eb123456"), "/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")
            ```
        """
        started = time.monotonic()
        wanted = local_checksums(source)
        present = self._seen.get(destination, {})
        changed = [name for name, checksum in wanted.items() if present.get(name) != checksum]
        total = sum((source / name).stat().st_size for name in changed) or 1
        self.client.mkdir(self.system_id, destination)
        if self.source_url and changed and total >= self.transfer_threshold_bytes:
            sent = self._transfer(source.name, changed, destination, total, on_progress)
            return TransferStats(
                files_transferred=len(changed), bytes_transferred=sent, seconds=time.monotonic() - started
            )
        sent = 0
        for name in changed:
            content = (source / name).read_bytes()
            self.client.upload(self.system_id, posixpath.join(destination, name), content)
            sent += len(content)
            if on_progress:
                on_progress(sent / total)
        if on_progress and not changed:
            on_progress(1.0)
        return TransferStats(files_transferred=len(changed), bytes_transferred=sent, seconds=time.monotonic() - started)

    def _transfer(
        self, dataset: str, names: list[str], destination: str, total: int, on_progress: ProgressCallback | None
    ) -> int:
        """One transfer request for the changed files, from `source_url`, followed to its end."""
        elements = [
            TransferElement(
                source_uri=f"{self.source_url}/{dataset}/{name}",
                destination_uri=f"tapis://{self.system_id}/{relative_path(posixpath.join(destination, name))}",
            )
            for name in names
        ]
        task = self.client.create_transfer(elements, tag=f"tacc-orchestrator {dataset}")
        while not task.ended:
            time.sleep(self.poll_seconds)
            task = self.client.get_transfer(task.uuid)
            if on_progress and task.total_bytes_transferred is not None:
                on_progress(min(task.total_bytes_transferred / (task.estimated_total_bytes or total), 1.0))
        if task.status != "COMPLETED":
            raise StagingError(
                f"Tapis transfer {task.uuid} of {dataset} ended {task.status}: {task.error_message or 'no message'}"
            )
        return task.total_bytes_transferred or total

    def checksums(self, destination: str) -> dict[str, str]:
        """SHA-256 of every file under `destination` (the manifest excluded), from their bytes.

        Example:
            ```python
            files.checksums("/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")  # {"chunk-000.csv": "9f2c..."}
            ```
        """
        root = relative_path(destination)
        sums = {}
        for info in self.client.list_files(self.system_id, destination, recurse=True):
            name = posixpath.relpath(relative_path(info.path), root)
            if info.type != "file" or name == MANIFEST_NAME:
                continue
            content = self.client.get_contents(self.system_id, posixpath.join(destination, name))
            if content is not None:
                sums[name] = hashlib.sha256(content).hexdigest()
        self._seen[destination] = sums
        return sums

    def read_manifest(self, destination: str) -> dict[str, str] | None:
        """The manifest written by the last complete staging, if any.

        Example:
            ```python
            files.read_manifest("/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")
            ```
        """
        content = self.client.get_contents(self.system_id, posixpath.join(destination, MANIFEST_NAME))
        return json.loads(content) if content else None

    def write_manifest(self, destination: str, manifest: dict[str, str]) -> None:
        """Mark `destination` complete (the last upload of a staging).

        Example:
            ```python
            files.write_manifest(destination, inventory.manifest)
            ```
        """
        self.client.upload(
            self.system_id, posixpath.join(destination, MANIFEST_NAME), json.dumps(manifest, sort_keys=True).encode()
        )

    def remove(self, destination: str) -> None:
        """Delete `destination` and everything under it.

        Example:
            ```python
            files.remove("/scratch/01234/jdoe/tacc/jobs/6f1c...")
            ```
        """
        self.client.delete(self.system_id, destination)
