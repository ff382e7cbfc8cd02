"""A batch job as a Prefect `JobBlock`: `trigger()` submits it to its system's scheduler (Slurm at
TACC, the embedded cluster locally), the `JobRun` follows it to its end."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect.blocks.abstract import JobBlock, JobRun
from pydantic import Field

from blocks.clusters import scheduler_for
from tacc_jobs.exceptions import JobFailed, TransientSchedulerError
from tacc_jobs.models import JobStatus
from tacc_jobs.schedulers import JobSubmission, Scheduler
from tacc_jobs.tracking import (
    JobObservation,
    TrackedJob,
    TrackingPolicy,
    next_poll_interval,
    observe,
    read_result,
)
from tacc_jobs.walltime import utcnow


class BatchJob(JobBlock[dict[str, Any]]):
    """One batch job for a system's scheduler (Slurm at TACC, or the embedded local cluster).

    Example:
        ```python
        run = BatchJob(system="local", submission=submission, progress_path=p, result_path=r).trigger()
        run.wait_for_completion()
        metrics = run.fetch_result()
        ```
    """

    _block_type_name = "TACC Batch Job"
    _block_type_slug = "tacc-batch-job"

    system: str = Field(default="local", description="local, ls6, frontera, stampede3 or vista")
    submission: JobSubmission
    progress_path: str = Field(description="File the job writes its progress (0-1) to")
    result_path: str = Field(description="JSON file the job writes its metrics to")
    time_limit_seconds: float | None = Field(default=None, description="Wall time, to poll faster near the end")
    poll_min_seconds: float = Field(default=1.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    tracking: TrackingPolicy = Field(
        default_factory=TrackingPolicy, description="When an unseen job is lost; transient failures sat out"
    )

    def trigger(self) -> BatchJobRun:
        """Submit the job and return its run."""
        scheduler = scheduler_for(self.system)
        scheduler_job_id = scheduler.submit(self.submission)
        self.logger.info("Submitted %s to %s as job %s", self.submission.name, self.system, scheduler_job_id)
        return BatchJobRun(self, scheduler, scheduler_job_id)

    def attach(self, scheduler_job_id: str) -> BatchJobRun:
        """The run of a job submitted earlier (after a restart, or a resumed flow run)."""
        return BatchJobRun(self, scheduler_for(self.system), scheduler_job_id)


class BatchJobRun(JobRun[dict[str, Any]]):
    """A submitted job: wait for it to end, then fetch the metrics it wrote."""

    def __init__(self, job: BatchJob, scheduler: Scheduler, scheduler_job_id: str) -> None:
        self.job, self.scheduler, self.scheduler_job_id = job, scheduler, scheduler_job_id
        self.tracked = TrackedJob(
            scheduler_job_id=scheduler_job_id,
            name=job.submission.name,
            progress_path=job.progress_path,
            stdout_path=job.submission.stdout_path,
            result_path=job.result_path,
        )
        self.last: JobObservation | None = None

    def wait_for_completion(
        self, on_poll: Callable[[JobObservation], None] | None = None, pending_timeout: float | None = None
    ) -> JobObservation:
        """Poll until the job ends, adaptively; `on_poll` sees every observation.

        With `pending_timeout`, return early (the observation is not `ended`) when the job still
        waits in the queue that many seconds after the wait began: the caller may stop holding
        a process for a job that can sit in a TACC queue for days.

        What an observation means is the job's `TrackingPolicy`'s decision: transient failures
        (a dropped connection, an unreachable controller) are sat out with a growing interval,
        up to `max_transient_failures` in a row; a job the scheduler stops reporting (a
        controller restart, slurmdbd down) is waited for, and ends FAILED as lost only after
        `unseen_grace_seconds`.

        Raises:
            TransientSchedulerError: After too many transient failures in a row.
        """
        policy = self.job.tracking
        interval, failures, started, unseen_since = self.job.poll_min_seconds, 0, None, None
        waiting_since = time.monotonic()
        while True:
            try:
                observation = observe(self.scheduler, [self.tracked])[0]
            except TransientSchedulerError as error:  # a login-node hiccup must not end a two-day wait
                failures += 1
                if failures >= policy.max_transient_failures:
                    raise
                interval = min(interval * 2, self.job.poll_max_seconds)
                self.logger.warning(
                    "Polling job %s failed (%s); retrying in %.0f s", self.scheduler_job_id, error, interval
                )
                time.sleep(interval)
                continue
            failures, now = 0, utcnow()
            if observation.unseen:
                unseen_since = unseen_since or now
                if policy.is_lost(unseen_since, now):
                    observation.status, observation.reason = (
                        JobStatus.FAILED,
                        policy.lost_reason(self.scheduler_job_id, unseen_since),
                    )
            else:
                unseen_since = None
            if observation.not_understood:
                self.logger.warning("Job %s: %s; its status is kept", self.scheduler_job_id, observation.reason)
            self.tracked.stdout_offset = observation.next_stdout_offset
            changed = self.last is None or (observation.status, observation.reason) != (
                self.last.status,
                self.last.reason,
            )
            self.last = observation
            if on_poll is not None:
                on_poll(observation)
            if observation.ended:
                return observation
            if (
                pending_timeout is not None
                and observation.status is JobStatus.QUEUING
                and time.monotonic() - waiting_since >= pending_timeout
            ):
                return observation
            if observation.state is not None and observation.state.start is not None:
                started = observation.state.start
            seconds_left = None
            if started is not None and self.job.time_limit_seconds:
                seconds_left = self.job.time_limit_seconds - (time.time() - started.timestamp())
            interval = next_poll_interval(
                interval,
                changed,
                observation.status,
                seconds_left,
                self.job.poll_min_seconds,
                self.job.poll_max_seconds,
            )
            time.sleep(interval)

    def fetch_result(self) -> dict[str, Any]:
        """The metrics the job wrote (its result JSON).

        Raises:
            JobFailed: When the job has not completed successfully.
        """
        if self.last is None or not self.last.ended:
            self.wait_for_completion()
        assert self.last is not None
        if self.last.status is not JobStatus.COMPLETED:
            raise JobFailed(f"job {self.scheduler_job_id} ended {self.last.status}: {self.last.reason}")
        return self.last.result or read_result(self.scheduler, self.job.result_path) or {}
