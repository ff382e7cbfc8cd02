"""The report's pictures (daily cost by team, the wait-time histogram by queue): stacked bar
charts written as PNG."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)


def stacked_bar_chart(
    rows: list[dict[str, Any]],
    x: str,
    stack: str,
    value: str,
    destination: Path,
    title: str,
    ylabel: str,
    categories: Sequence[str] | None = None,
) -> Path:
    """Draw `rows` as one bar per `x` (in `categories` order, else sorted), stacked by `stack`
    (one colour each), `value` high; write a PNG to `destination`.

    Example:
        ```python
        rows = [{"day": "2026-11-02", "team": "ml-research", "cost_usd": 12.5}, {"day": "2026-11-03", "team": "ml-research", "cost_usd": 3.0}]
        stacked_bar_chart(rows, "day", "team", "cost_usd", Path("daily-cost.png"), "Daily GPU cost by team", "cost (USD)")
        ```
    """
    columns = list(categories) if categories is not None else sorted({str(row[x]) for row in rows})
    by_stack: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        by_stack[str(row[stack])][str(row[x])] = float(row[value] or 0)
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=100)
    bottom = [0.0] * len(columns)
    for name, heights_by_x in sorted(by_stack.items()):
        heights = [heights_by_x.get(column, 0.0) for column in columns]
        axes.bar(columns, heights, bottom=bottom, label=name)
        bottom = [base + height for base, height in zip(bottom, heights)]
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.tick_params(axis="x", rotation=45)
    if by_stack:
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, format="png")
    plt.close(figure)
    return destination
