"""Every error the project raises, under one base class.

`TransientError` marks what may succeed if tried again (a dropped connection, a timeout, an
unreachable controller): Prefect tasks retry those and nothing else (`tasks.policies`). Every
other error is permanent: retrying cannot fix it, and its message says what to change.

Example:
    >>> issubclass(TransientSchedulerError, TransientError), issubclass(PlanRefused, TransientError)
    (True, False)
"""

from __future__ import annotations


class TaccOrchestratorError(Exception):
    """Base class of the project's errors."""


class TransientError(TaccOrchestratorError):
    """A failure worth retrying: the same call may succeed later."""


class InvalidJobRequest(TaccOrchestratorError, ValueError):
    """A request that cannot be accepted; the message names each field and what is allowed."""


class PlanRefused(TaccOrchestratorError, ValueError):
    """The request cannot run as asked; the message names the field and what is allowed."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class JobNotFound(TaccOrchestratorError, LookupError):
    """No job with that id is in the store."""


class IllegalTransition(TaccOrchestratorError, ValueError):
    """A status change the job's lifecycle does not allow (e.g. COMPLETED -> RUNNING)."""


class JobAlreadyEnded(TaccOrchestratorError, ValueError):
    """The job has already ended, so there is nothing to cancel."""


class JobFailed(TaccOrchestratorError, RuntimeError):
    """The scheduler job ended in another state than COMPLETED (non-zero exit, TIMEOUT,
    OUT_OF_MEMORY, ...), so it has no result."""


class SchedulerError(TaccOrchestratorError, RuntimeError):
    """A scheduler command failed."""


class TransientSchedulerError(SchedulerError, TransientError):
    """A scheduler failure worth retrying: a timeout, a dropped connection, an unreachable controller."""


class LoginNodeUnreachable(TransientSchedulerError):
    """SSH could not reach the login node (refused, reset, timed out): no command ran there."""


class LoginRequired(LoginNodeUnreachable):
    """The login node wants a person: it asks for an interactive login (TACC's MFA) because the
    master connection that commands ride is gone. Waited out, as an unreachable host is, until
    someone logs in again (`python -m deployments.login <system>`)."""


class PermanentSchedulerError(SchedulerError):
    """A refusal that retrying cannot fix: a bad account, partition or option."""


class JobCapReached(SchedulerError):
    """sbatch refused a job over a cap on how many jobs a user or account may have queued
    (Slurm's QOS/association submit and job counts): it is not submitted, and may be once one
    of them ends. Neither transient (a retry in seconds meets the same cap) nor permanent."""


class WebhookError(TaccOrchestratorError, RuntimeError):
    """A webhook was refused (a private address) or answered 4xx; the message masks its URL."""


class ConfigurationError(TaccOrchestratorError, RuntimeError):
    """A setting names something that is not there (a block, a file): an operator must fix it."""


class StagingError(TaccOrchestratorError, RuntimeError):
    """A dataset cannot be staged as it is (missing, unreadable, a link, or failed verification)."""


class TapisRequestError(PermanentSchedulerError):
    """Tapis refused a request (a 4xx answer): the message is the API's own, with what to fix."""

    def __init__(self, message: str, status_code: int) -> None:
        super().__init__(message)
        self.status_code = status_code


class TapisUnavailableError(TransientSchedulerError):
    """Tapis did not answer, or answered 429 or 5xx, even after the client's retries."""


class InvalidAccountingInput(TaccOrchestratorError, ValueError):
    """Accounting input that cannot be read as it is (a missing file, malformed JSON or CSV, a
    wrong column set, an unknown time zone): permanent, and the message names the input and
    what is wrong with it."""
