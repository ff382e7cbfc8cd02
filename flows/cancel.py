"""cancel-job: cancel one job in its scheduler and in the job store."""

from __future__ import annotations

import uuid

from prefect import flow

from tacc_jobs.models import JobRecord
from tasks.cancellation import cancel_job_run


@flow(name="cancel-job", flow_run_name="cancel-job/{job_id}")
def cancel_job(job_id: uuid.UUID) -> JobRecord:
    """Cancel a job: `scancel` (or the embedded cluster's cancel), then the record is CANCELLED.

    Raises:
        JobAlreadyEnded: When the job already completed or failed.

    Example:
        ```python
        from flows.cancel import cancel_job
        cancel_job("6f1c2d9e-...").status  # JobStatus.CANCELLED
        ```
    """
    return cancel_job_run(job_id)
