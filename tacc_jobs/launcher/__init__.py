"""Stand-in for the packed-allocation launcher's API (to be replaced by the launcher branch):
the names of the contract, so the orchestrator side can be built and tested."""

from __future__ import annotations

import shlex
from datetime import datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

LAUNCHER_SOURCE: str = (Path(__file__).resolve().parent / "pile.py").read_text()
STATUS_FILE = "output/status.json"
CANCEL_FILE = "cancel"
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"})


class ManifestMember(BaseModel):
    """One request of the pile."""

    name: str
    gpus: int
    work_dir: str
    script: str
    runtime_seconds: float


class Manifest(BaseModel):
    """manifest.json."""

    version: int = 1
    placement: Literal["srun", "local"]
    gpus_per_node: int
    members: list[ManifestMember]


class MemberStatus(BaseModel):
    """output/status.json of one member."""

    state: str
    exit_code: int | None = None
    node: str | None = None
    gpus: list[int] = []
    start: datetime | None = None
    end: datetime | None = None
    gpu_seconds: float | None = None
    restart: int = 0

    @property
    def is_final(self) -> bool:
        """Whether the member has ended."""
        return self.state in FINAL_STATES


def launcher_lines(allocation_dir: str) -> list[str]:
    """Batch-script lines that write launcher.py into the allocation dir and run it on the manifest."""
    launcher = shlex.quote(f"{allocation_dir}/launcher.py")
    return [
        f"cat > {launcher} <<'TACC_LAUNCHER_EOF'",
        LAUNCHER_SOURCE.rstrip("\n"),
        "TACC_LAUNCHER_EOF",
        f'exec "${{TACC_PYTHON:-python3}}" {launcher} {shlex.quote(f"{allocation_dir}/manifest.json")}',
    ]
