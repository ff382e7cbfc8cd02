"""Vectorized parsers of accounting text (Arrow compute, no Python per row): job ids, times in a
declared zone, Slurm durations, memory sizes, and values out of TRES strings."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

MISSING_TIMES = ("", "Unknown", "None", "N/A")
_JOB_ID = r"^(?P<job>\d+(?:_(?:\d+|\[[0-9,%-]+\]))?)(?:\+(?P<het>\d+))?(?:\.(?P<step>.+))?$"
_OFFSET = r"(?:Z|[+-]\d{2}(?::?\d{2})?)$"
_DURATION = r"^(?:(?P<d>\d+)-)?(?:(?P<h>\d+):)?(?P<m>\d{1,2}):(?P<s>\d{2}(?:\.\d+)?)$"
_SIZE = r"^(?P<amount>\d+(?:\.\d+)?)(?P<unit>[KMGTP]?)$"
_SIZE_UNITS = pa.array(["", "K", "M", "G", "T", "P"])
_TYPED_GPUS = r"(?:^|,)gres/gpu:(?P<type>[^=,]+)=(?P<count>\d+)"


def _groups(values: pd.Series, pattern: str) -> dict[str, pa.Array]:
    """Each named regex group of each value, as Arrow arrays: null where the value does not match,
    "" where an optional group did not take part."""
    array = pa.array(values, from_pandas=True)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.string())
    matches = pc.extract_regex(array, pattern)
    return {field.name: group for field, group in zip(matches.type, matches.flatten())}


def _series(array: pa.Array, index: pd.Index) -> pd.Series:
    """Arrow values as a Series: numbers as float64 (NaN where null), text Arrow-backed."""
    if pa.types.is_floating(array.type) or pa.types.is_integer(array.type):
        return pd.Series(array.to_numpy(zero_copy_only=False), index=index, dtype=float)
    return pd.Series(pd.arrays.ArrowExtensionArray(array), index=index)


def _number(array: pa.Array) -> pa.Array:
    """Digits (and "" for 0) as float64."""
    return pc.cast(pc.if_else(pc.equal(array, ""), pa.scalar("0", array.type), array), pa.float64())


def parse_job_ids(values: pd.Series) -> pd.DataFrame:
    """Split sacct job ids into the job (`123`, array task `123_4`), the heterogeneous component
    (`123+1`) and the step (`123.batch`, `123+1.0`); `job` is null for text that is no job id.

    Example:
        >>> parse_job_ids(pd.Series(["123_4", "77+1.batch", "x"])).fillna("-").values.tolist()
        [['123_4', '-', '-'], ['77', '1', 'batch'], ['-', '-', '-']]
    """
    ids = _groups(values, _JOB_ID)
    blank_is_null = {
        name: pc.if_else(pc.equal(group, ""), pa.scalar(None, group.type), group) for name, group in ids.items()
    }
    return pd.DataFrame({name: _series(blank_is_null[name], values.index) for name in ("job", "het", "step")})


class Instants(NamedTuple):
    """Parsed times in UTC. `first` and `last` differ only where a wall-clock time is ambiguous
    (the hour repeated when daylight saving time ends): its first and its second occurrence."""

    first: pd.Series
    last: pd.Series
    bad: pd.Series
    """Text that was present but is no time."""


def parse_times(values: pd.Series, zone: str = "UTC") -> Instants:
    """Times as UTC instants. Text with an offset (`Z`, `-06:00`) is that instant; text without one
    is a wall-clock time in `zone`. A time skipped when daylight saving time starts moves forward
    to the first valid one. `Unknown`, `None`, `N/A` and empty text are missing, not bad.

    Example:
        >>> times = parse_times(pd.Series(["2026-11-01T01:30:00", "2026-11-01T12:00:00Z", "Unknown"]), "America/Chicago")
        >>> [str(time) for time in times.first]
        ['2026-11-01 06:30:00+00:00', '2026-11-01 12:00:00+00:00', 'NaT']
        >>> str(times.last[0]), times.bad.tolist()
        ('2026-11-01 07:30:00+00:00', [False, False, False])
    """
    text = values.fillna("").astype(str).str.strip()
    missing = text.isin(MISSING_TIMES)
    present = text.where(~missing)
    if zone == "UTC":
        first = pd.to_datetime(present, utc=True, errors="coerce", format="ISO8601")
        return Instants(first, first, first.isna() & ~missing)
    has_offset = text.str.contains(_OFFSET, regex=True)
    aware = pd.to_datetime(present.where(has_offset), utc=True, errors="coerce", format="ISO8601")
    naive = pd.to_datetime(present.where(~has_offset), errors="coerce", format="ISO8601")

    def occurrence(daylight: bool) -> pd.Series:
        ambiguous = np.full(len(naive), daylight)
        local = naive.dt.tz_localize(zone, ambiguous=ambiguous, nonexistent="shift_forward").dt.tz_convert("UTC")
        return aware.where(has_offset, local)

    first = occurrence(True)
    return Instants(first, occurrence(False), first.isna() & ~missing)


def parse_durations(values: pd.Series) -> pd.Series:
    """Slurm's `[D-]HH:MM:SS`, `MM:SS` or `MM:SS.mmm` as seconds; NaN for anything else
    (`UNLIMITED`, `Partition_Limit`, empty).

    Example:
        >>> parse_durations(pd.Series(["1-02:00:00", "25:00", "00:01.500", "UNLIMITED"])).tolist()
        [93600.0, 1500.0, 1.5, nan]
    """
    parts = {name: _number(group) for name, group in _groups(values, _DURATION).items()}
    days_hours = pc.add(pc.multiply(parts["d"], 86400.0), pc.multiply(parts["h"], 3600.0))
    return _series(pc.add(days_hours, pc.add(pc.multiply(parts["m"], 60.0), parts["s"])), values.index)


def parse_sizes(values: pd.Series) -> pd.Series:
    """Slurm memory sizes (`1020K`, `2.50G`, `4000M`; a bare number is bytes) as bytes; NaN for
    anything else.

    Example:
        >>> parse_sizes(pd.Series(["1020K", "2.5G", "0", ""])).tolist()
        [1044480.0, 2684354560.0, 0.0, nan]
    """
    parts = _groups(values, _SIZE)
    power = pc.cast(pc.index_in(parts["unit"], value_set=_SIZE_UNITS.cast(parts["unit"].type)), pa.float64())
    return _series(pc.multiply(_number(parts["amount"]), pc.power(1024.0, power)), values.index)


def _tres(key: str, value: str = "[^,]*") -> str:
    return rf"(?:^|,){re.escape(key)}=(?P<value>{value})(?:,|$)"


def tres_value(values: pd.Series, key: str) -> pd.Series:
    """The value of one TRES (`cpu`, `mem`, `gres/gpu`, ...) in Slurm's `key=value,...` strings;
    null where the key is absent. The key matches exactly: `gres/gpu` is not `gres/gpu:a100`.

    Example:
        >>> tres_value(pd.Series(["cpu=512,gres/gpu:a100=4,gres/gpu=4,mem=500G", "cpu=1"]), "mem").tolist()
        ['500G', <NA>]
    """
    return _series(_groups(values, _tres(key))["value"], values.index)


def tres_count(values: pd.Series, key: str) -> pd.Series:
    """A count TRES (`cpu`, `node`, `gres/gpu`) as a number; NaN where the key is absent.

    Example:
        >>> tres_count(pd.Series(["cpu=512,gres/gpu:a100=4,gres/gpu=4", "cpu=1"]), "gres/gpu").tolist()
        [4.0, nan]
    """
    return _series(_number(_groups(values, _tres(key, r"\d+"))["value"]), values.index)


def allocated_gpus(alloc_tres: pd.Series) -> pd.DataFrame:
    """GPUs and their type from AllocTRES. The untyped `gres/gpu=N` is the count when present (it
    already counts the typed entries: `gres/gpu:a100=4,gres/gpu=4` is 4 GPUs, not 8); otherwise
    the typed entries are summed (`gres/gpu:h100=2` is 2). `gpus` is NaN where AllocTRES names no
    GPU at all, `gpu_type` null where it names no type.

    Example:
        >>> tres = pd.Series(["gres/gpu:a100=4,gres/gpu=4", "gres/gpu:h100=2", "gres/gpu=0", "cpu=8,node=1"])
        >>> gpus = allocated_gpus(tres)
        >>> gpus["gpus"].tolist(), gpus["gpu_type"].fillna("-").tolist()
        ([4.0, 2.0, 0.0, nan], ['a100', 'h100', '-', '-'])
    """
    gpus = tres_count(alloc_tres, "gres/gpu")
    typed = _groups(alloc_tres, _TYPED_GPUS)
    typed_only = gpus.isna() & _series(typed["count"], alloc_tres.index).notna()
    if typed_only.any():
        counts = (
            alloc_tres[typed_only].astype(str).str.extractall(_TYPED_GPUS)["count"].astype(int).groupby(level=0).sum()
        )
        gpus = gpus.fillna(counts.astype(float))
    return pd.DataFrame({"gpus": gpus, "gpu_type": _series(pc.utf8_lower(typed["type"]), alloc_tres.index)})
