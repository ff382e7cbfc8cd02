"""Schema migrations of the project's database (Alembic, run programmatically)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from tacc_jobs.store.locks import database_lock

MIGRATIONS_DIR = Path(__file__).with_name("migrations")


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent), one process at a time: a
    new stack's first submission and its first sweep open the database together, and on SQLite
    Alembic's DDL runs outside any transaction.

    Example:
        ```python
        migrate(create_engine("postgresql+psycopg://tacc@db/tacc_jobs"))
        ```
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with database_lock(engine, "migrate", wait=True), engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
