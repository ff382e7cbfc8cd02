"""TACC's charge rule, the one place it is written: whole nodes x max(hours used, 0.25) x the
queue's SU rate. Billing is on time used, not time requested; every job pays 15 minutes at least.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar

import numpy as np

from tacc_jobs.planning.catalog import QueueSpec

MINIMUM_CHARGE = timedelta(minutes=15)
MINIMUM_CHARGE_HOURS = MINIMUM_CHARGE.total_seconds() / 3600

Amount = TypeVar("Amount")


def billed_hours(duration: timedelta) -> float:
    """Hours TACC bills for a duration: every job at least 15 minutes.

    Example:
        >>> billed_hours(timedelta(minutes=5)), billed_hours(timedelta(hours=2))
        (0.25, 2.0)
    """
    return max(duration, MINIMUM_CHARGE).total_seconds() / 3600


def service_units(nodes: Amount, hours: Amount, su_per_node_hour: Amount) -> Amount:
    """SUs for `nodes` whole nodes used `hours` in a queue charging `su_per_node_hour`; works on
    numbers and, element by element, on pandas columns (accounting charges a million jobs at once).

    Example:
        >>> float(service_units(4, 5 / 60, 4.0))
        4.0
    """
    return nodes * np.maximum(hours, MINIMUM_CHARGE_HOURS) * su_per_node_hour  # type: ignore[operator]


def charge_su(spec: QueueSpec, nodes: int, used: timedelta) -> float:
    """TACC's charge for one job in `spec`'s queue, rounded to 4 decimals.

    Example:
        >>> from tacc_jobs.planning.catalog import find_queue
        >>> charge_su(find_queue("ls6", "gpu-a100"), 4, timedelta(minutes=5))
        4.0
    """
    return round(float(service_units(nodes, used.total_seconds() / 3600, spec.su_per_node_hour)), 4)


def split_charge(total: float, weights: Sequence[float]) -> list[float]:
    """A packed allocation's SUs split among its members in proportion to `weights` (their
    GPU-seconds), each rounded to 4 decimals, the shares summing to `total` exactly (the rounding
    rest goes to the largest share). Members that used nothing (all weights 0) share it evenly.

    Example:
        >>> split_charge(4.0, [3600, 1800, 1800])
        [2.0, 1.0, 1.0]
        >>> split_charge(1.0, [0, 0, 0])
        [0.3334, 0.3333, 0.3333]
    """
    if not weights:
        return []
    weight_sum = float(sum(weights))
    fractions = [weight / weight_sum for weight in weights] if weight_sum > 0 else [1 / len(weights)] * len(weights)
    shares = [round(total * fraction, 4) for fraction in fractions]
    largest = max(range(len(shares)), key=lambda index: (shares[index], -index))
    shares[largest] = round(shares[largest] + total - sum(shares), 4)
    return shares
