"""Named locks between processes that share the project's database, which die with their holder."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text


@contextmanager
def database_lock(engine: Engine, name: str, *, wait: bool = False) -> Iterator[bool]:
    """Hold the lock `name` on this database while the block runs: yields whether this process
    got it. With `wait`, it waits for the holder and always gets it; without, it never waits.

    The lock dies with its holder, however it dies: a PostgreSQL session-level advisory lock
    (for processes on any host), or `flock` on a file beside a SQLite database.

    Example:
        ```python
        with database_lock(engine, "watch-jobs") as mine:
            if mine: ...  # the only holder now
        ```
    """
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    if engine.dialect.name == "postgresql":
        with engine.connect() as connection:
            take = "pg_advisory_lock(:key) IS NOT NULL" if wait else "pg_try_advisory_lock(:key)"
            mine = bool(connection.execute(text(f"SELECT {take}"), {"key": key}).scalar())
            connection.commit()
            try:
                yield mine
            finally:
                if mine:
                    connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
        return
    database = engine.url.database
    path = (
        Path(f"{database}.{name}.lock")
        if database and database != ":memory:"
        else Path(tempfile.gettempdir()) / f"tacc-{key}.lock"
    )
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
