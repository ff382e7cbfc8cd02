"""Where the project's database lives: the database block when one is saved, else SQLite."""

from __future__ import annotations

from prefect_sqlalchemy import SqlAlchemyConnector
from sqlalchemy import Engine, create_engine, event

from tasks.settings import get_settings
from tasks.store.schema import migrate

_engines: dict[str, Engine] = {}


def sqlite_engine(url: str) -> Engine:
    """A SQLite engine set up for several processes (WAL, waits on locks instead of failing)."""
    engine = create_engine(url, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def _migrated(engine: Engine) -> Engine:
    key = engine.url.render_as_string(hide_password=True)
    if key not in _engines:
        migrate(engine)
        _engines[key] = engine
    return _engines[key]


def is_missing_block(error: ValueError) -> bool:
    """Whether `Block.load` failed because no block of that name is saved (not a broken one)."""
    return "Unable to find block document" in str(error)


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
        url = f"sqlite:///{settings.sqlite_path}"
        return _engines.get(url) or _migrated(sqlite_engine(url))
    return _migrated(connector.get_engine())
