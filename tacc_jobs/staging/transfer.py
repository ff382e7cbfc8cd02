"""Moving a dataset directory to a cluster's scratch, behind one small interface.

`LocalCopy` serves the embedded cluster; `RsyncOverSsh` reaches TACC through the same
multiplexed SSH connection the scheduler uses. A Globus transfer would be a third class.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from tacc_jobs.exceptions import PermanentSchedulerError, TransientSchedulerError
from tacc_jobs.ssh import SshConnection

MANIFEST_NAME = ".tacc-manifest.json"
ProgressCallback = Callable[[float], None]
RSYNC_TRANSIENT_EXIT_CODES = {10, 12, 30, 35, 255}
CHECKSUMS_PROGRAM = r"""
cd -- "$1" 2>/dev/null || exit 0
find . -type f ! -name .tacc-manifest.json -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum --
"""


class TransferStats(BaseModel):
    """What one push moved."""

    files_transferred: int
    bytes_transferred: int
    seconds: float


class Transfer(Protocol):
    """Push a directory to the cluster, and read back what is there."""

    host: str

    def push(self, source: Path, destination: str, on_progress: ProgressCallback | None = None) -> TransferStats:
        """Make `destination` hold the files of `source` (resumable, checksummed)."""

    def checksums(self, destination: str) -> dict[str, str]:
        """Relative path -> SHA-256 of every file under `destination` (the manifest excluded)."""

    def read_manifest(self, destination: str) -> dict[str, str] | None:
        """The manifest written by the last complete staging, if any."""

    def write_manifest(self, destination: str, manifest: dict[str, str]) -> None:
        """Mark `destination` complete: the manifest is written last."""

    def remove(self, destination: str) -> None:
        """Delete `destination` and everything under it."""


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_checksums(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every regular file under `root` (the manifest excluded)."""
    return {
        path.relative_to(root).as_posix(): file_sha256(path)
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and path.name != MANIFEST_NAME
    }


class LocalCopy:
    """Copies into the embedded cluster's scratch, file by file, only what differs."""

    host = "localhost"

    def push(self, source: Path, destination: str, on_progress: ProgressCallback | None = None) -> TransferStats:
        started = time.monotonic()
        target = Path(destination)
        present = local_checksums(target) if target.exists() else {}
        wanted = local_checksums(source)
        files = sent = 0
        for index, (name, checksum) in enumerate(wanted.items(), start=1):
            if present.get(name) != checksum:
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                partial = (target / name).with_name(f".{Path(name).name}.partial")
                shutil.copyfile(source / name, partial)
                os.replace(partial, target / name)
                files, sent = files + 1, sent + (source / name).stat().st_size
            if on_progress:
                on_progress(index / len(wanted))
        return TransferStats(files_transferred=files, bytes_transferred=sent, seconds=time.monotonic() - started)

    def checksums(self, destination: str) -> dict[str, str]:
        return local_checksums(Path(destination)) if Path(destination).exists() else {}

    def read_manifest(self, destination: str) -> dict[str, str] | None:
        path = Path(destination) / MANIFEST_NAME
        return json.loads(path.read_text()) if path.exists() else None

    def remove(self, destination: str) -> None:
        shutil.rmtree(destination, ignore_errors=True)

    def write_manifest(self, destination: str, manifest: dict[str, str]) -> None:
        partial = Path(destination) / f"{MANIFEST_NAME}.partial"
        partial.write_text(json.dumps(manifest, indent=1, sort_keys=True))
        os.replace(partial, Path(destination) / MANIFEST_NAME)


_PERCENT = re.compile(rb"(\d{1,3})%")
_STAT = re.compile(r"^(Number of regular files transferred|Literal data): ([\d,]+)", re.MULTILINE)


class RsyncOverSsh:
    """rsync through the scheduler's multiplexed SSH connection: resumable (`--partial`),
    checksummed (`--checksum`), with progress from `--info=progress2`."""

    def __init__(self, connection: SshConnection, bandwidth_limit_kbps: int | None = None) -> None:
        self.connection = connection
        self.host = connection.host
        self.bandwidth_limit_kbps = bandwidth_limit_kbps

    def push(self, source: Path, destination: str, on_progress: ProgressCallback | None = None) -> TransferStats:
        self.connection.run(["mkdir", "-p", "--", destination])
        argv = [
            "rsync",
            "--archive",
            "--partial",
            "--checksum",
            "--protect-args",
            "--no-inc-recursive",
            "--info=progress2",
            "--stats",
            f"--exclude=/{MANIFEST_NAME}",
            "-e",
            shlex.join(self.connection.ssh_argv),
        ]
        if self.bandwidth_limit_kbps:
            argv.append(f"--bwlimit={self.bandwidth_limit_kbps}")
        argv += [f"{source}/", f"{self.connection.target}:{destination.rstrip('/')}/"]
        started = time.monotonic()
        with self.connection.session_slot():  # rsync's ssh is one more session on the login host
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # one pipe: no deadlock
            assert process.stdout is not None
            output = b""
            try:
                while chunk := process.stdout.read1(65536):
                    output += chunk
                    if on_progress and (percents := _PERCENT.findall(chunk)):
                        on_progress(int(percents[-1]) / 100)
            except BaseException:
                process.kill()
                raise
            finally:
                process.wait()
        if process.returncode != 0:
            error = (
                TransientSchedulerError if process.returncode in RSYNC_TRANSIENT_EXIT_CODES else PermanentSchedulerError
            )
            tail = output.decode(errors="replace").strip().splitlines()[-3:]
            raise error(f"rsync to {self.host} exited {process.returncode}: {' / '.join(tail)}")
        stats = {name: int(value.replace(",", "")) for name, value in _STAT.findall(output.decode(errors="replace"))}
        return TransferStats(
            files_transferred=stats.get("Number of regular files transferred", 0),
            bytes_transferred=stats.get("Literal data", 0),
            seconds=time.monotonic() - started,
        )

    def checksums(self, destination: str) -> dict[str, str]:
        completed = self.connection.run(["bash", "-c", CHECKSUMS_PROGRAM, "checksums", destination])
        if completed.returncode != 0:
            raise PermanentSchedulerError(f"sha256sum on {self.host}: {completed.stderr.strip()}")
        sums = {}
        for line in completed.stdout.splitlines():
            checksum, _, name = line.partition("  ")
            sums[posixpath.normpath(name)] = checksum
        return sums

    def remove(self, destination: str) -> None:
        completed = self.connection.run(["rm", "-rf", "--", destination])
        if completed.returncode != 0:
            raise PermanentSchedulerError(f"rm -rf {destination} on {self.host}: {completed.stderr.strip()}")

    def read_manifest(self, destination: str) -> dict[str, str] | None:
        completed = self.connection.run(["cat", "--", posixpath.join(destination, MANIFEST_NAME)])
        return json.loads(completed.stdout) if completed.returncode == 0 and completed.stdout else None

    def write_manifest(self, destination: str, manifest: dict[str, str]) -> None:
        path = posixpath.join(destination, MANIFEST_NAME)
        program = 'cat > "$1.partial" && mv -f -- "$1.partial" "$1"'
        completed = self.connection.run(
            ["bash", "-c", program, "write-manifest", path], stdin=json.dumps(manifest, sort_keys=True)
        )
        if completed.returncode != 0:
            raise PermanentSchedulerError(f"writing {path} on {self.host}: {completed.stderr.strip()}")
