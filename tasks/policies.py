"""How Prefect tasks retry (transient failures only) and which of them a resumed flow run skips."""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE, CacheKeyFnPolicy
from prefect.client.schemas.objects import State, TaskRun
from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
from prefect.context import TaskRunContext
from prefect.tasks import Task, exponential_backoff
from prefect.utilities.hashing import hash_objects
from sqlalchemy import exc as database_errors

from tacc_jobs.exceptions import TransientError


def is_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry only what may succeed next time: dropped connections, timeouts, 5xx answers, a
    database that could not be reached or timed out (SQLAlchemy's OperationalError).

    Example:
        ```python
        @task(retries=3, retry_condition_fn=is_transient)
        def poll(): ...
        ```
    """
    return is_transient_error(state.data if isinstance(state.data, BaseException) else None)


def is_transient_error(error: BaseException | None) -> bool:
    """Whether `error` may pass next time (see `is_transient`). Prefect's
    `ConcurrencySlotAcquisitionError` (an SSH-session slot asked of an unreachable Prefect API)
    is judged by the error it wraps.

    Example:
        ```python
        is_transient_error(httpx.ConnectError("refused"))  # True
        ```
    """
    if isinstance(error, ConcurrencySlotAcquisitionError):
        return is_transient_error(error.__cause__)
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code >= 500 or error.response.status_code == 429
    return isinstance(
        error,
        (
            TransientError,
            httpx.TransportError,
            TimeoutError,
            ConnectionError,
            database_errors.OperationalError,
            database_errors.TimeoutError,
        ),
    )


cluster_task = partial(
    task,
    cache_policy=NO_CACHE,
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=is_transient,
)

"""`@cluster_task`: a task that talks to a cluster or a remote service. It never caches (remote
state changes under it) and retries transient failures three times with exponential backoff."""


def once_per_flow_run(context: TaskRunContext, arguments: dict[str, Any]) -> str | None:
    """Cache key: the task's name, its flow run and its arguments (not its source code, so a
    redeploy while a run is suspended does not make the resumed run submit again)."""
    flow_run_id = context.task_run.flow_run_id
    return None if flow_run_id is None else hash_objects(context.task.name, str(flow_run_id), arguments)


ONCE_PER_FLOW_RUN = CacheKeyFnPolicy(cache_key_fn=once_per_flow_run)
"""For the steps before a flow run suspends (plan, record, stage, submit): with
`persist_result=True`, the resumed run finds their results and skips them."""
