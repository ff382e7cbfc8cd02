"""Times in portable SQL: seconds since the epoch on PostgreSQL and SQLite, so that durations,
buckets and overlaps are arithmetic on numbers, the same on both."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Float, case
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import ColumnElement
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement


class epoch(FunctionElement[float]):  # noqa: N801  (an SQL function, named like one)
    """Seconds since 1970-01-01 UTC of a timestamp (NULL stays NULL).

    Example:
        >>> from sqlalchemy import column
        >>> from sqlalchemy.dialects import postgresql, sqlite
        >>> str(epoch(column("start_time")).compile(dialect=postgresql.dialect()))
        'CAST(EXTRACT(EPOCH FROM start_time) AS DOUBLE PRECISION)'
        >>> str(epoch(column("start_time")).compile(dialect=sqlite.dialect()))
        'ROUND((julianday(start_time) - 2440587.5) * 86400.0, 3)'
    """

    type = Float()
    inherit_cache = True
    name = "epoch"


@compiles(epoch, "postgresql")
def _epoch_postgresql(element: epoch, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)}) AS DOUBLE PRECISION)"


@compiles(epoch, "sqlite")
def _epoch_sqlite(element: epoch, compiler: SQLCompiler, **kw: Any) -> str:
    # julianday counts days since noon 4714 BC; rounded to the millisecond it loses to binary floats
    return f"ROUND((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0, 3)"


def least(a: ColumnElement[Any], b: ColumnElement[Any] | float) -> ColumnElement[Any]:
    """The smaller of two numbers, on every backend (PostgreSQL has LEAST, SQLite a two-argument MIN).

    Example:
        >>> from sqlalchemy import column
        >>> str(least(column("finish"), 10.0).compile(compile_kwargs={"literal_binds": True}))
        'CASE WHEN (finish < 10.0) THEN finish ELSE 10.0 END'
    """
    return case((a < b, a), else_=b)


def greatest(a: ColumnElement[Any], b: ColumnElement[Any] | float) -> ColumnElement[Any]:
    """The larger of two numbers, on every backend (PostgreSQL has GREATEST, SQLite a two-argument MAX).

    Example:
        >>> from sqlalchemy import column
        >>> str(greatest(column("start"), 0.0).compile(compile_kwargs={"literal_binds": True}))
        'CASE WHEN (start > 0.0) THEN start ELSE 0.0 END'
    """
    return case((a > b, a), else_=b)
