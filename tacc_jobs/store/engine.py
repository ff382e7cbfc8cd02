"""Engines for the project's database: SQLite set up for several processes, migrated once."""

from __future__ import annotations

from sqlalchemy import Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite

from tacc_jobs.store.schema import migrate

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


def migrated(engine: Engine) -> Engine:
    """The process's one engine for this database, migrated to the newest schema on first use."""
    key = engine.url.render_as_string(hide_password=True)
    if key not in _engines:
        migrate(engine)
        _engines[key] = engine
    return _engines[key]


def migrated_sqlite(url: str) -> Engine:
    """The process's one migrated SQLite engine for `url`."""
    return _engines.get(url) or migrated(sqlite_engine(url))


def upsert_into(engine: Engine, table: Table) -> Insert:
    """An INSERT into `table` in the engine's dialect, which offers `on_conflict_do_update`
    (PostgreSQL and SQLite spell it alike; core SQLAlchemy has none)."""
    return (postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert)(table)
