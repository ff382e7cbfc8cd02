"""The launcher's files as models: manifest.json (written by the orchestrator), status.json (by the launcher)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, model_validator

from tacc_jobs.launcher.pile import FINAL_STATES


class ManifestMember(BaseModel):
    """One request of a packed allocation: its GPUs and its ordinary job dir on the cluster."""

    name: str = Field(description="Its Slurm step name: tacc-<record uuid hex>")
    gpus: int = Field(ge=1)
    work_dir: str
    script: str = Field(description="member.sh in its work dir")
    runtime_seconds: int = Field(ge=1, description="Its planned wall time")


class Manifest(BaseModel):
    """The pile of a packed allocation, in start order.

    Example:
        >>> manifest = Manifest(placement="local", gpus_per_node=4, members=[ManifestMember(
        ...     name="tacc-1", gpus=1, work_dir="/s/jobs/1", script="/s/jobs/1/member.sh", runtime_seconds=60)])
        >>> manifest.model_dump_json()[:51]
        '{"version":1,"placement":"local","gpus_per_node":4,'
        >>> Manifest.model_validate_json(manifest.model_dump_json()) == manifest
        True
    """

    version: Literal[1] = 1
    placement: Literal["srun", "local"]
    gpus_per_node: int = Field(ge=1)
    members: list[ManifestMember]

    @model_validator(mode="after")
    def _members_fit_on_a_node(self) -> Manifest:
        too_big = [member.name for member in self.members if member.gpus > self.gpus_per_node]
        if too_big:
            raise ValueError(f"members never span nodes: {too_big} ask more than {self.gpus_per_node} GPUs")
        return self


class MemberStatus(BaseModel):
    """A member's output/status.json.

    Example:
        >>> status = MemberStatus.model_validate_json('{"state": "RUNNING", "node": "c001", "gpus": [0], '
        ...                                           '"start": "2026-11-28T20:00:00.000+00:00", "restart": 0}')
        >>> status.is_final, status.gpus
        (False, [0])
    """

    state: Literal["RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"]
    exit_code: int | None = Field(
        default=None, description="None while running, and for a member cancelled before it started"
    )
    node: str | None = Field(default=None, description="None for a member cancelled before it started")
    gpus: list[int] = Field(default_factory=list)
    start: datetime | None = None
    end: datetime | None = None
    gpu_seconds: float | None = None
    restart: int = 0

    @property
    def is_final(self) -> bool:
        """Whether the member has ended (COMPLETED, FAILED, CANCELLED or TIMEOUT)."""
        return self.state in FINAL_STATES

    def gpu_seconds_until(self, end: datetime) -> float:
        """The GPU-seconds it used: as the launcher recorded them once it ended; for a member
        stopped with its allocation (left RUNNING), its GPUs from its start to `end`.

        Example:
            >>> from datetime import timezone
            >>> stopped = MemberStatus(state="RUNNING", gpus=[0, 1], start=datetime(2026, 11, 28, 20, 0, tzinfo=timezone.utc))
            >>> stopped.gpu_seconds_until(datetime(2026, 11, 28, 20, 1, tzinfo=timezone.utc))
            120.0
        """
        if self.gpu_seconds is not None:
            return self.gpu_seconds
        if self.start is None:
            return 0.0
        return round(len(self.gpus) * max(0.0, (end - self.start).total_seconds()), 3)
