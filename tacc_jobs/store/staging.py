"""Dataset staging records (per system) and the transfer history bandwidth is measured from."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from enum import Enum

from pydantic import BaseModel, ConfigDict
from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tacc_jobs.store.tables import DatasetStagingRow, TransferRow
from tacc_jobs.walltime import utcnow

PRIORITY_RANK = {"high": 0, "normal": 1}
STALE_STAGING = timedelta(hours=1)
"""A STAGING record this long without an update belongs to a stager that died."""


class StagingStatus(str, Enum):
    """Where a dataset stands on a system."""

    QUEUED = "QUEUED"
    STAGING = "STAGING"
    STAGED = "STAGED"
    FAILED = "FAILED"


class DatasetStaging(BaseModel):
    """A dataset's staging record on one system."""

    model_config = ConfigDict(from_attributes=True)

    system: str
    dataset_id: str
    status: StagingStatus
    reason: str | None = None
    priority: str
    path: str | None = None
    digest: str | None = None
    files: int | None = None
    bytes: int | None = None
    progress: float = 0.0
    requested_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class StagingStore:
    """Staging records and transfer history in the project's database.

    Example:
        ```python
        store = StagingStore(open_engine())
        store.request("ls6", "VLASS2.1.eb123456", "high")
        store.get("ls6", "VLASS2.1.eb123456").status  # StagingStatus.QUEUED
        ```
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, system: str, dataset_id: str) -> DatasetStaging | None:
        """The dataset's record on `system`, if it was ever requested."""
        with Session(self.engine) as session:
            row = session.scalars(
                select(DatasetStagingRow).where(
                    DatasetStagingRow.system == system, DatasetStagingRow.dataset_id == dataset_id
                )
            ).first()
            return DatasetStaging.model_validate(row) if row else None

    def request(self, system: str, dataset_id: str, priority: str) -> DatasetStaging:
        """Queue the dataset for staging (a record that is STAGING is left to its stager, unless
        that stager has given no sign of life for `STALE_STAGING`). Two first requests of one
        dataset at once (a batch staging it for several jobs) make one record: the one whose
        insert loses the race reads the winner's."""
        try:
            return self._request(system, dataset_id, priority)
        except IntegrityError:
            return self._request(system, dataset_id, priority)

    def _request(self, system: str, dataset_id: str, priority: str) -> DatasetStaging:
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            row = session.scalars(
                select(DatasetStagingRow).where(
                    DatasetStagingRow.system == system, DatasetStagingRow.dataset_id == dataset_id
                )
            ).first()
            if row is None:
                row = DatasetStagingRow(id=uuid.uuid4(), system=system, dataset_id=dataset_id, progress=0.0)
                session.add(row)
            if row.status != StagingStatus.STAGING.value or row.updated_at < now - STALE_STAGING:
                row.status, row.reason, row.progress = StagingStatus.QUEUED.value, None, 0.0
                row.priority, row.requested_at = priority, now
            row.updated_at = now
            session.flush()
            return DatasetStaging.model_validate(row)

    def waiting_ahead(self, system: str, dataset_id: str) -> int:
        """QUEUED requests on the system served before this one: higher priority, or same and older."""
        mine = self.get(system, dataset_id)
        if mine is None:
            return 0
        with Session(self.engine) as session:
            queued = session.execute(
                select(DatasetStagingRow.dataset_id, DatasetStagingRow.priority, DatasetStagingRow.requested_at).where(
                    DatasetStagingRow.system == system, DatasetStagingRow.status == StagingStatus.QUEUED.value
                )
            ).all()
        key = (PRIORITY_RANK[mine.priority], mine.requested_at)
        return sum(
            1
            for other, priority, requested in queued
            if other != dataset_id and (PRIORITY_RANK[priority], requested) < key
        )

    def try_start(self, system: str, dataset_id: str, max_parallel: int) -> bool:
        """Move QUEUED -> STAGING when no request is ahead and a slot is free on the system."""
        if self.waiting_ahead(system, dataset_id):
            return False
        staging = (
            select(func.count())
            .select_from(DatasetStagingRow)
            .where(DatasetStagingRow.system == system, DatasetStagingRow.status == StagingStatus.STAGING.value)
            .scalar_subquery()
        )
        with self.engine.begin() as connection:
            started = connection.execute(
                update(DatasetStagingRow)
                .where(
                    DatasetStagingRow.system == system,
                    DatasetStagingRow.dataset_id == dataset_id,
                    DatasetStagingRow.status == StagingStatus.QUEUED.value,
                    staging < max_parallel,
                )
                .values(status=StagingStatus.STAGING.value, started_at=utcnow(), updated_at=utcnow())
            ).rowcount
        return bool(started)

    def update(self, system: str, dataset_id: str, **fields: object) -> None:
        """Set fields of the dataset's record (status, reason, progress, digest, ...)."""
        values = {key: value.value if isinstance(value, Enum) else value for key, value in fields.items()}
        with self.engine.begin() as connection:
            connection.execute(
                update(DatasetStagingRow)
                .where(DatasetStagingRow.system == system, DatasetStagingRow.dataset_id == dataset_id)
                .values(**{"updated_at": utcnow(), **values})
            )

    def record_transfer(self, host: str, bytes_sent: int, seconds: float) -> None:
        """Remember one transfer, for later bandwidth estimates."""
        with Session(self.engine) as session, session.begin():
            session.add(TransferRow(host=host, bytes=bytes_sent, seconds=seconds, finished_at=utcnow()))

    def bandwidth(self, host: str, recent: int = 10, min_bytes: int = 1 << 20) -> float | None:
        """Bytes per second over the host's recent transfers of at least `min_bytes`, if any."""
        query = (
            select(TransferRow.bytes, TransferRow.seconds)
            .where(TransferRow.host == host, TransferRow.bytes >= min_bytes, TransferRow.seconds > 0)
            .order_by(TransferRow.finished_at.desc())
            .limit(recent)
        )
        with Session(self.engine) as session:
            rows = session.execute(query).all()
        return sum(b for b, _ in rows) / sum(s for _, s in rows) if rows else None
