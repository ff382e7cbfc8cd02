"""What tasks and flows read of the Prefect run they are in: its logger and its name."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prefect import get_run_logger, runtime
from prefect.exceptions import MissingContextError
from prefect.logging import get_logger


def run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow or task run; the module logger in hooks, which run outside."""
    try:
        return get_run_logger()
    except MissingContextError:
        return get_logger(__name__)


def request_run_name(flow_name: str) -> Callable[[], str]:
    """A flow-run namer `<flow>/<agent>/<dataset>` that reads the run's `request` parameter,
    whether it arrived as a model (Python call) or as a dict (deployment run)."""

    def name() -> str:
        request = runtime.flow_run.parameters.get("request", {})
        fields = request if isinstance(request, dict) else request.model_dump()
        return f"{flow_name}/{fields.get('agent', '?')}/{fields.get('dataset_id', '?')}"

    return name
