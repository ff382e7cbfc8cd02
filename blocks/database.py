"""The project's database: the `SqlAlchemyConnector` block when one is saved, else SQLite."""

from __future__ import annotations

from typing import TypeVar

from prefect.blocks.core import Block
from prefect.settings import PREFECT_API_URL
from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import Engine

from tacc_jobs.exceptions import ConfigurationError
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


_block_engines: dict[tuple[str, str], Engine] = {}
"""(Prefect API, block name) -> the engine of the saved block: loaded once per process."""


def open_engine() -> Engine:
    """The database, migrated: the `SqlAlchemyConnector` block named by `TACC_ORCH_DATABASE_BLOCK`
    (default `tacc-jobs-db`) when it is saved, else SQLite under `TACC_ORCH_HOME`.

    A block named by the variable must exist: its absence (a typo, a client pointed at another
    Prefect server) raises `ConfigurationError` rather than quietly opening an empty SQLite
    store, where watch-jobs would see none of the real jobs. Only the default name falls back.

    A saved block is loaded once per process (a flow run's, under a process worker), not once
    per task: a batch of thousands of jobs would otherwise read it from the API thousands of
    times. A block saved later is seen by the next process; a missing one is looked up each time.

    Example:
        ```python
        JobStore(open_engine()).history("jdoe").total
        ```
    """
    settings = get_settings()
    key = (str(PREFECT_API_URL.value()), settings.database_block)
    if key in _block_engines:
        return _block_engines[key]
    try:
        connector = SqlAlchemyConnector.load(settings.database_block)
    except ValueError as error:
        if not is_missing_block(error):
            raise
        if "database_block" in settings.model_fields_set:  # named on purpose: SQLite would lose its jobs
            raise ConfigurationError(
                f"TACC_ORCH_DATABASE_BLOCK names the SqlAlchemyConnector block {settings.database_block!r}, which the "
                f"Prefect server at {PREFECT_API_URL.value()} does not have: save it there, or unset the variable for SQLite"
            ) from None
        settings.home.mkdir(parents=True, exist_ok=True)
        return migrated_sqlite(f"sqlite:///{settings.sqlite_path}")
    _block_engines[key] = migrated(connector.get_engine())
    return _block_engines[key]


def open_job_store() -> JobStore:
    """The job store on the configured database (see `open_engine`)."""
    return JobStore(open_engine())


def open_staging_store() -> StagingStore:
    """The staging store on the configured database (see `open_engine`)."""
    return StagingStore(open_engine())
