"""Prefect blocks of tacc-orchestrator: configuration and secrets, and what is built from them.

- `credentials`: `TaccCredentials`, one per TACC system (a `CredentialsBlock`: `get_client()`
  hands out the SSH connection).
- `jobs`: `BatchJob`, one job on a system's scheduler (a `JobBlock`: `trigger()` returns a `JobRun`).
- `database`: the job store's engine from prefect-sqlalchemy's `SqlAlchemyConnector`, else SQLite.
- `clusters`: which scheduler, transfer and agent runtime serve a system, from its block.
"""

from blocks.credentials import TaccCredentials
from blocks.jobs import BatchJob

__all__ = ["BatchJob", "TaccCredentials"]
