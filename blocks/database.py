"""The project's database: the `SqlAlchemyConnector` block when one is saved, else SQLite."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block
from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import Engine

from tacc_jobs.settings import get_settings
from tacc_jobs.store import JobStore, StagingStore
from tacc_jobs.store.engine import migrated, migrated_sqlite


def is_missing_block(error: ValueError) -> bool:
    """Whether `Block.load` failed because no block of that name is saved (not a broken one)."""
    return "Unable to find block document" in str(error)


BlockType = TypeVar("BlockType", bound=Block)


def load_saved(block_type: type[BlockType], name: str) -> BlockType | None:
    """The block of that type saved under `name`; None when none is (a broken one raises).

    Example:
        ```python
        load_saved(SqlAlchemyConnector, "tacc-jobs-db")  # None: the store is SQLite
        ```
    """
    try:
        return block_type.load(name)  # type: ignore[return-value]
    except ValueError as error:
        if not is_missing_block(error):
            raise
        return None


def open_engine() -> Engine:
    """The database, migrated: the `SqlAlchemyConnector` block named by `TACC_ORCH_DATABASE_BLOCK`
    (default `tacc-jobs-db`) when it is saved, else SQLite under `TACC_ORCH_HOME`.

    Example:
        ```python
        JobStore(open_engine()).history("jdoe").total
        ```
    """
    settings = get_settings()
    try:
        connector = SqlAlchemyConnector.load(settings.database_block)
    except ValueError as error:
        if not is_missing_block(error):
            raise
        settings.home.mkdir(parents=True, exist_ok=True)
        return migrated_sqlite(f"sqlite:///{settings.sqlite_path}")
    return migrated(connector.get_engine())


def open_job_store() -> JobStore:
    """The job store on the configured database (see `open_engine`)."""
    return JobStore(open_engine())


def open_staging_store() -> StagingStore:
    """The staging store on the configured database (see `open_engine`)."""
    return StagingStore(open_engine())
