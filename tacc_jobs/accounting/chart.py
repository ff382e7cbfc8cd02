"""The report's picture: daily cost by team as a stacked bar chart (PNG)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend is chosen first)


def daily_cost_chart(rows: list[dict[str, Any]], destination: Path, title: str) -> Path:
    """Draw `rows` (day, team, cost_usd) as stacked daily bars, one colour per team; write a PNG."""
    days = sorted({str(row["day"]) for row in rows})
    by_team: dict[str, dict[str, float]] = defaultdict(dict)
    for row in rows:
        by_team[str(row["team"])][str(row["day"])] = float(row["cost_usd"])
    figure, axes = plt.subplots(figsize=(10, 4.5), dpi=100)
    bottom = [0.0] * len(days)
    for team, costs in sorted(by_team.items()):
        heights = [costs.get(day, 0.0) for day in days]
        axes.bar(days, heights, bottom=bottom, label=team)
        bottom = [base + height for base, height in zip(bottom, heights)]
    axes.set_title(title)
    axes.set_ylabel("cost (USD)")
    axes.tick_params(axis="x", rotation=45)
    axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    destination.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(destination, format="png")
    plt.close(figure)
    return destination
