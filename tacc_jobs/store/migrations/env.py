"""Alembic environment: migrations run on a connection handed in by `tacc_jobs.store.schema.migrate()`."""

from alembic import context

from tacc_jobs.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
