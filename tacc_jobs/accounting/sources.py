"""Where accounting rows come from: sacct on a cluster, JSON/CSV files, a paginated HTTP feed.

Every source yields DataFrames of bounded size, so memory stays flat however long the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path

import httpx
import pandas as pd

from tacc_jobs.schedulers import SACCT_FIELDS


def sacct_frames(rows: Iterable[list[str]], chunk_size: int) -> Iterator[tuple[pd.DataFrame, list[str]]]:
    """Chunks of sacct rows as string DataFrames, with the rows that had the wrong field count."""
    iterator = iter(rows)
    while chunk := list(islice(iterator, chunk_size)):
        good = [row for row in chunk if len(row) == len(SACCT_FIELDS)]
        malformed = ["|".join(row) for row in chunk if len(row) != len(SACCT_FIELDS)]
        yield pd.DataFrame(good, columns=list(SACCT_FIELDS), dtype="string[pyarrow]").fillna(""), malformed


def file_frames(path: Path, chunk_size: int) -> Iterator[pd.DataFrame]:
    """Job records from a CSV file, a JSON array, or JSON lines (`.jsonl`), in chunks.

    Raises:
        ValueError: For another file type, or a JSON document that is not a list of records.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv":
        yield from pd.read_csv(path, chunksize=chunk_size, dtype="string", keep_default_na=False, na_values=[""])
    elif suffix in (".jsonl", ".ndjson"):
        yield from pd.read_json(path, lines=True, chunksize=chunk_size, dtype=False)
    elif suffix == ".json":
        records = json.loads(path.read_text())
        if not isinstance(records, list):
            raise ValueError(f"{path}: expected a JSON array of job records")
        for offset in range(0, len(records), chunk_size):
            yield pd.DataFrame.from_records(records[offset : offset + chunk_size])
    else:
        raise ValueError(f"{path}: use a .csv, .json or .jsonl file")


def http_frames(url: str, client: httpx.Client, start: datetime, end: datetime, max_pages: int = 10_000) -> Iterator[pd.DataFrame]:
    """Job records from a paginated JSON endpoint: each page is `{"items": [...], "next": url|null}`.

    The first request asks for the window (`?start=...&end=...`, ISO 8601 UTC); the `next` links
    carry on from there. A feed that ignores the window sends everything, which upserts unchanged.

    Raises:
        httpx.HTTPStatusError: For an error answer (5xx ones are retried by the task).
        ValueError: For a page that is not of that shape.
    """
    next_url: str | None = url
    params: dict[str, str] | None = {"start": start.astimezone(timezone.utc).isoformat(), "end": end.astimezone(timezone.utc).isoformat()}
    for _ in range(max_pages):
        if next_url is None:
            return
        response = client.get(next_url, params=params)
        params = None
        response.raise_for_status()
        page = response.json()
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise ValueError(f"{next_url}: expected {{'items': [...], 'next': ...}}")
        if page["items"]:
            yield pd.DataFrame.from_records(page["items"])
        next_url = page.get("next") and str(response.url.join(page["next"]))
    raise ValueError(f"{url}: more than {max_pages} pages")
