"""The TACC GPU queue catalog: one table of data (`tacc_queues.csv`), loaded into models.

Queue limits change at TACC without notice; update the CSV, not the code. Rows are in order
of preference: when a request names no queue, the planner takes the first production queue
of its system that fits.
"""

from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

CATALOG_PATH = Path(__file__).with_name("tacc_queues.csv")


class QueueSpec(BaseModel):
    """One GPU queue (Slurm partition) of one system."""

    system: str
    host: str
    queue: str
    gpu_model: str
    gpu_type: str = Field(description="Short lower-case GPU type used in accounting, e.g. a100")
    gpus_per_node: int = Field(ge=1)
    max_nodes: int = Field(ge=1)
    max_wall_hours: float = Field(gt=0)
    max_jobs_per_user: int = Field(ge=1)
    su_per_node_hour: float = Field(ge=0)
    dev_queue: str | None = None

    @property
    def is_dev(self) -> bool:
        """Whether this is a short development queue (another queue names it as its twin)."""
        return any(spec.dev_queue == self.queue for spec in system_queues(self.system))


@lru_cache(maxsize=1)
def load_catalog(path: Path = CATALOG_PATH) -> tuple[QueueSpec, ...]:
    """Read the queue table.

    Example:
        >>> [q.queue for q in load_catalog() if q.system == "vista"]
        ['gh', 'gh-dev']
    """
    with path.open(newline="") as handle:
        rows = [{key: value or None for key, value in row.items()} for row in csv.DictReader(handle)]
    return tuple(QueueSpec.model_validate(row) for row in rows)


def system_queues(system: str) -> list[QueueSpec]:
    """The queues of one system, in preference order."""
    return [spec for spec in load_catalog() if spec.system == system]


def find_queue(system: str, queue: str) -> QueueSpec | None:
    """The spec of `queue` on `system`, or None when the system has no such queue."""
    return next((spec for spec in system_queues(system) if spec.queue == queue), None)
