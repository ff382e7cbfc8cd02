"""Reading Prefect's API page by page."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

API_PAGE = 200
"""The most objects Prefect's API returns at once."""


def read_every(read: Callable[..., list[T]], **filters: Any) -> list[T]:
    """Every object a paged client read returns, all read before any is acted on (acting may
    move objects out of the filter).

    Example:
        ```python
        runs = read_every(client.read_flow_runs, flow_run_filter=suspended)
        ```
    """
    objects: list[T] = []
    while True:
        page = read(**filters, limit=API_PAGE, offset=len(objects))
        objects += page
        if len(page) < API_PAGE:
            return objects
