"""Wall-time strings as Slurm and users write them, to and from `timedelta`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_CLOCK = re.compile(r"^(?:(?P<days>\d+)-)?(?P<hours>\d{1,3}):(?P<minutes>\d{2}):(?P<seconds>\d{2})$")
_UNIT = re.compile(r"^(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>[hm])$")

WALLTIME_FORMATS = "'HH:MM:SS', 'D-HH:MM:SS', '<hours>h' or '<minutes>m' (e.g. '02:30:00', '1-12:00:00', '48h')"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (the only clock the project reads)."""
    return datetime.now(timezone.utc)


def parse_walltime(text: str) -> timedelta:
    """Parse a wall time such as `02:30:00`, `1-12:00:00`, `48h` or `90m`.

    Raises:
        ValueError: When the text is in none of those forms or is zero.

    Example:
        >>> parse_walltime("1-02:00:00")
        datetime.timedelta(days=1, seconds=7200)
        >>> parse_walltime("48h") == timedelta(hours=48)
        True
    """
    value = text.strip()
    clock = _CLOCK.match(value)
    if clock:
        minutes, seconds = int(clock["minutes"]), int(clock["seconds"])
        if minutes > 59 or seconds > 59:
            raise ValueError(f"{text!r}: minutes and seconds must be below 60")
        duration = timedelta(days=int(clock["days"] or 0), hours=int(clock["hours"]), minutes=minutes, seconds=seconds)
    elif unit := _UNIT.match(value):
        amount = float(unit["amount"])
        duration = timedelta(hours=amount) if unit["unit"] == "h" else timedelta(minutes=amount)
    else:
        raise ValueError(f"{text!r} is not a wall time; use {WALLTIME_FORMATS}")
    if duration <= timedelta(0):
        raise ValueError(f"{text!r}: a wall time must be longer than zero")
    return duration


def format_walltime(duration: timedelta) -> str:
    """Format a duration as Slurm's `[D-]HH:MM:SS` (rounded up to whole seconds).

    Example:
        >>> format_walltime(timedelta(days=1, hours=2, seconds=5))
        '1-02:00:05'
    """
    total = int(-(-duration.total_seconds() // 1))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    clock = f"{hours:02d}:{minutes:02d}:{seconds:02d}"
    return f"{days}-{clock}" if days else clock
