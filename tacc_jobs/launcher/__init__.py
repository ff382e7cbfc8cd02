"""The launcher of packed allocations: a GPU-aware work pile that runs inside one Slurm job.

`pile.py` is the program (standard library only); the batch script carries its source, so
nothing but the manifest and the members' scripts has to be uploaded.
"""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

from tacc_jobs.launcher.models import Manifest, ManifestMember, MemberStatus
from tacc_jobs.launcher.pile import CANCEL_FILE, STATUS_FILE

LAUNCHER_SOURCE: str = (Path(__file__).resolve().parent / "pile.py").read_text()
HEREDOC_END = "TACC_LAUNCHER_SOURCE_END"

__all__ = [
    "CANCEL_FILE",
    "LAUNCHER_SOURCE",
    "STATUS_FILE",
    "Manifest",
    "ManifestMember",
    "MemberStatus",
    "launcher_lines",
]


def launcher_lines(allocation_dir: str) -> list[str]:
    """The batch-script lines that write `launcher.py` into the allocation dir and run it on the manifest.

    The source goes through a quoted heredoc (nothing in it is expanded); the launcher runs
    with `$TACC_PYTHON`, else `python3`, in place of the batch shell (`exec`), so the signals
    Slurm sends the batch step reach it.

    Example:
        >>> lines = launcher_lines("/scratch/u/allocations/a1")
        >>> lines[0], lines[-1]
        ("cat > /scratch/u/allocations/a1/launcher.py <<'TACC_LAUNCHER_SOURCE_END'", 'exec "${TACC_PYTHON:-python3}" /scratch/u/allocations/a1/launcher.py /scratch/u/allocations/a1/manifest.json')
    """
    source = LAUNCHER_SOURCE.split("\n")
    assert HEREDOC_END not in source, "the launcher's source would end its own heredoc"
    launcher = shlex.quote(posixpath.join(allocation_dir, "launcher.py"))
    manifest = shlex.quote(posixpath.join(allocation_dir, "manifest.json"))
    return [
        f"cat > {launcher} <<'{HEREDOC_END}'",
        *source,
        HEREDOC_END,
        f'exec "${{TACC_PYTHON:-python3}}" {launcher} {manifest}',
    ]
