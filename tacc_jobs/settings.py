"""Process-wide settings, read from `TACC_ORCH_*` environment variables."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[1]


def month_day(text: str) -> str:
    """A day of every year as MM-DD (so not 02-29)."""
    try:
        datetime.strptime(f"2001-{text}", "%Y-%m-%d")
    except ValueError:
        raise ValueError(f"{text!r} is not a day of every year as MM-DD (e.g. 10-01)") from None
    return text


MonthDay = Annotated[str, AfterValidator(month_day)]


class OrchestratorSettings(BaseSettings):
    """Settings of the orchestrator itself (not of a cluster: those live in blocks).

    Example:
        ```bash
        export TACC_ORCH_HOME=/var/lib/tacc-orchestrator
        export TACC_ORCH_SU_BUDGETS='{"jdoe": 500}'
        ```
    """

    model_config = SettingsConfigDict(env_prefix="TACC_ORCH_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".tacc-orchestrator",
        description="Where the embedded default keeps its SQLite job store and local cluster.",
    )
    dataset_root: Path = Field(
        default=REPO_ROOT / "datasets",
        description="Local directory holding one sub-directory per dataset id.",
    )
    database_block: str = Field(
        default="tacc-jobs-db",
        description="Name of the SqlAlchemyConnector block for the job store; SQLite when absent.",
    )
    usd_per_gpu_hour: float = Field(default=0.35, ge=0)
    cost_warning_usd: float = Field(default=100.0, ge=0, description="Estimates above this carry a cost warning.")
    su_budgets: dict[str, float] = Field(
        default_factory=dict, description="Per-user SU budgets; users not listed have none."
    )
    su_budget_period_start: MonthDay = Field(
        default="01-01",
        description="MM-DD on which each yearly SU budget period starts: set it to the allocation's year "
        "(a TACC allocation runs a year from its start). Charges before it no longer count.",
    )
    su_budget_period_starts: dict[str, MonthDay] = Field(
        default_factory=dict, description="Per-user budget period starts (MM-DD), over su_budget_period_start."
    )
    allow_private_webhooks: bool = Field(
        default=False, description="Let webhook_url point at loopback, private or link-local addresses"
    )
    poll_min_seconds: float = Field(default=1.0, gt=0, description="Poll floor on the embedded cluster")
    remote_poll_min_seconds: float = Field(
        default=30.0, gt=0, description="Poll floor on TACC: login nodes are shared, no tight squeue loops"
    )
    poll_max_seconds: float = Field(default=300.0, gt=0)
    ssh_sessions_per_host: int = Field(
        default=8,
        ge=1,
        description="Concurrent SSH sessions per login host (below OpenSSH's MaxSessions of 10), for the "
        "global concurrency limit ssh-sessions-<host> when it is first created; change it later in the UI",
    )

    unseen_grace_seconds: float = Field(
        default=900.0, gt=0, description="A job neither squeue nor accounting reports for this long ends FAILED as lost"
    )
    unsubmitted_grace_seconds: float = Field(
        default=300.0,
        ge=0,
        description="watch-jobs looks up by name a job recorded this long ago that has no scheduler id",
    )
    unsubmitted_timeout_seconds: float = Field(
        default=86400.0,
        gt=0,
        description="A job whose submission began but left no scheduler id, none found by name, and whose flow run "
        "still looks alive is abandoned (its name fenced, its record FAILED) this long after the submission began; "
        "at once when its flow run has ended",
    )

    default_bandwidth_mb_per_s: float = Field(
        default=50.0, gt=0, description="Transfer estimate for a host with no measured transfers (MB/s)"
    )
    staging_slots_per_system: int = Field(default=2, ge=1, description="Concurrent stagings per system")

    usd_per_gpu_hour_by_type: dict[str, float] = Field(
        default_factory=dict, description='Dollar rates per GPU type (e.g. {"h100": 0.65}); others use usd_per_gpu_hour'
    )
    teams_file: Path = Field(
        default=REPO_ROOT / "tacc_jobs" / "accounting" / "sample" / "teams.json",
        description="JSON list of teams (name, description, budget_usd) to create with their budgets",
    )
    ingest_overlap_hours: float = Field(
        default=24.0, ge=0, description="A nightly run re-reads this much before its watermark"
    )
    ingest_chunk_rows: int = Field(default=100_000, ge=1, description="Rows per chunk (memory stays flat)")

    @property
    def sqlite_path(self) -> Path:
        """The embedded job store's database file."""
        return self.home / "jobs.db"

    @property
    def local_cluster_dir(self) -> Path:
        """The embedded cluster's state directory (jobs, scratch)."""
        return self.home / "local-cluster"

    def su_budget_since(self, user_id: str, now: datetime | None = None) -> datetime:
        """The start of the user's current budget period (UTC midnight of its MM-DD): their
        charges before it no longer count against their budget.

        Example:
            >>> settings = OrchestratorSettings(su_budget_period_start="10-01")
            >>> settings.su_budget_since("jdoe", datetime(2026, 12, 4, tzinfo=timezone.utc)).date()
            datetime.date(2026, 10, 1)
            >>> settings.su_budget_since("jdoe", datetime(2026, 9, 30, tzinfo=timezone.utc)).date()
            datetime.date(2025, 10, 1)
        """
        now = now or datetime.now(timezone.utc)
        month, day = (
            int(part) for part in self.su_budget_period_starts.get(user_id, self.su_budget_period_start).split("-")
        )
        start = now.astimezone(timezone.utc).replace(month=month, day=day, hour=0, minute=0, second=0, microsecond=0)
        return start if start <= now else start.replace(year=start.year - 1)


def get_settings() -> OrchestratorSettings:
    """Read the settings from the environment now (tests change it between calls)."""
    return OrchestratorSettings()
