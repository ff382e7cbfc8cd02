"""Staging through the Tapis Files API: the `Transfer` interface without an SSH login.

Files are uploaded one by one (multipart), only those whose content differs from what is in
scratch; checksums are computed from the bytes the Files API returns (it has no checksum
call), so verification reads every file back once. The manifest is written last, as with
rsync, so an interrupted staging is never taken for a complete one.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
from pathlib import Path

from tacc_jobs.staging.transfer import (
    MANIFEST_NAME,
    ProgressCallback,
    TransferStats,
    local_checksums,
)
from tacc_jobs.tapis.client import TapisClient, relative_path


class TapisFiles:
    """Moves datasets to an execution system's scratch through the Files API.

    Example:
        ```python
        files = TapisFiles(TapisCredentials.load("ls6").get_client(), "ls6")
        stage(inspect_dataset(Path("datasets"), "VLASS2.1.eb123456"), files, "/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")
        ```
    """

    def __init__(self, client: TapisClient, system_id: str) -> None:
        self.client, self.system_id = client, system_id
        self.host = f"{client.base_url.split('://', 1)[-1]}/{system_id}"
        self._seen: dict[str, dict[str, str]] = {}  # destination -> checksums last read back

    def push(self, source: Path, destination: str, on_progress: ProgressCallback | None = None) -> TransferStats:
        """Upload the files of `source` whose content differs from the last checksums read back."""
        started = time.monotonic()
        wanted = local_checksums(source)
        present = self._seen.get(destination, {})
        changed = [name for name, checksum in wanted.items() if present.get(name) != checksum]
        total = sum((source / name).stat().st_size for name in changed) or 1
        self.client.mkdir(self.system_id, destination)
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

    def checksums(self, destination: str) -> dict[str, str]:
        """SHA-256 of every file under `destination` (the manifest excluded), from their bytes."""
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
        """The manifest written by the last complete staging, if any."""
        content = self.client.get_contents(self.system_id, posixpath.join(destination, MANIFEST_NAME))
        return json.loads(content) if content else None

    def write_manifest(self, destination: str, manifest: dict[str, str]) -> None:
        """Mark `destination` complete (the last upload of a staging)."""
        self.client.upload(self.system_id, posixpath.join(destination, MANIFEST_NAME), json.dumps(manifest, sort_keys=True).encode())

    def remove(self, destination: str) -> None:
        """Delete `destination` and everything under it."""
        self.client.delete(self.system_id, destination)
