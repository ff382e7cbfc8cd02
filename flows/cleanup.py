"""cleanup: remove job records and results past their retention."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.cleanup import CleanupSummary, remove_expired_jobs


@flow(name="cleanup")
def cleanup_expired(default_ttl_days: Annotated[int, Field(ge=1)] = 30, dry_run: bool = False) -> CleanupSummary:
    """Remove job records and results older than their TTL (default 30 days; a job's own
    `retention_days` overrides it). Deployed daily.

    Example:
        ```python
        from flows.cleanup import cleanup_expired
        cleanup_expired(dry_run=True)
        ```
    """
    return remove_expired_jobs(default_ttl_days, dry_run)
