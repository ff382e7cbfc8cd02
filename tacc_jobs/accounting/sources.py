"""Where accounting rows come from: sacct on a cluster, JSON/CSV files, a paginated HTTP feed.

Every source yields DataFrames of bounded size, so memory stays flat however long the input.
Input that cannot be read as it is raises `InvalidAccountingInput`, naming the input and what is
wrong: retrying cannot fix it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, Field, ValidationError

from tacc_jobs.accounting.normalize import RECORD_FIELDS
from tacc_jobs.exceptions import InvalidAccountingInput
from tacc_jobs.schedulers import SACCT_FIELDS

_STEP_OR_COMPONENT = re.compile(r"[+.]")
DOCUMENT_SHAPE = 'a JSON array of job records, or a {"teams": [...], "jobs": [...]} document'


class Team(BaseModel):
    """A team usage is accounted to, as files list it."""

    name: str = Field(min_length=1)
    description: str | None = None
    budget_usd: float | None = Field(default=None, ge=0)


class JobDocument(BaseModel):
    """A JSON file of teams and their jobs in one document (the seed's `mock_jobs.json` shape)."""

    teams: list[Team] = []
    jobs: list[dict[str, Any]]


def _job_of(row: list[str]) -> str:
    """The job a sacct row belongs to: its id without a component (`+1`) or step (`.batch`)."""
    return _STEP_OR_COMPONENT.split(row[0], maxsplit=1)[0]


class _SacctChunk:
    """sacct rows turned into Arrow columns a batch at a time, so only one batch of them is ever
    held as Python strings; rows with the wrong field count are set aside as text."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []
        self.malformed: list[str] = []
        self.size = 0
        self.last: list[str] | None = None

    def add(self, rows: list[list[str]]) -> None:
        good = [row for row in rows if len(row) == len(SACCT_FIELDS)]
        self.malformed += ["|".join(row) for row in rows if len(row) != len(SACCT_FIELDS)]
        columns = zip(*good) if good else ([] for _ in SACCT_FIELDS)
        self.batches.append(
            pa.record_batch([pa.array(column, type=pa.large_string()) for column in columns], names=list(SACCT_FIELDS))
        )
        self.size += len(rows)
        self.last = rows[-1] if rows else self.last

    def frame(self) -> tuple[pd.DataFrame, list[str]]:
        table = pa.Table.from_batches(self.batches)
        return table.to_pandas(types_mapper={pa.large_string(): pd.StringDtype("pyarrow")}.get), self.malformed

    def cut(self, rows: list[list[str]], chunk_size: int) -> int | None:
        """Where in `rows` (which follow this chunk's) the chunk may end: at the first row, once it
        holds `chunk_size` rows, that begins another job."""
        previous = [self.last, *rows]
        for index in range(max(chunk_size - self.size, 0), len(rows)):
            if previous[index] is not None and _job_of(rows[index]) != _job_of(previous[index]):
                return index
        return None


def sacct_frames(
    rows: Iterable[list[str]], chunk_size: int, batch_size: int = 10_000
) -> Iterator[tuple[pd.DataFrame, list[str]]]:
    """Chunks of about `chunk_size` sacct rows as string DataFrames, with the rows that had the
    wrong field count. A chunk ends only where the next job begins, so the steps, components and
    attempts of a job are always in the same chunk as the job. Rows are read `batch_size` at a time.

    Example:
        >>> rows = [[job] + [""] * (len(SACCT_FIELDS) - 1) for job in ("1", "1.batch", "2+0", "2+1", "2+1.0", "3")]
        >>> [list(frame["JobID"]) for frame, _ in sacct_frames(rows, 2, batch_size=4)]
        [['1', '1.batch'], ['2+0', '2+1', '2+1.0'], ['3']]
    """
    iterator = iter(rows)
    chunk, batch = _SacctChunk(), list(islice(iterator, batch_size))
    while batch:
        cut = chunk.cut(batch, chunk_size) if chunk.size + len(batch) >= chunk_size else None
        chunk.add(batch[:cut])
        if cut is None:
            batch = list(islice(iterator, batch_size))
            continue
        batch = [*batch[cut:], *islice(iterator, batch_size - (len(batch) - cut))]
        yield chunk.frame()
        chunk = _SacctChunk()
    if chunk.size:
        yield chunk.frame()


def require_columns(frame: pd.DataFrame, origin: str) -> pd.DataFrame:
    """The frame, if it has every column of `RECORD_FIELDS`.

    Raises:
        InvalidAccountingInput: Naming `origin` and the missing columns.

    Example:
        >>> require_columns(pd.DataFrame({"job_id": ["1"]}), "jobs.csv")
        Traceback (most recent call last):
        ...
        tacc_jobs.exceptions.InvalidAccountingInput: jobs.csv: missing columns team_name, model_name, provider, gpu_type, start_time, end_time, status (job records need job_id, team_name, model_name, provider, gpu_type, start_time, end_time, status)
    """
    missing = [column for column in RECORD_FIELDS if column not in frame.columns]
    if missing:
        raise InvalidAccountingInput(
            f"{origin}: missing columns {', '.join(missing)} (job records need {', '.join(RECORD_FIELDS)})"
        )
    return frame


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidAccountingInput(f"{path}: not valid JSON ({error})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidAccountingInput(f"{path}: cannot be read ({error})") from None


def _validation_message(error: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, issue['loc']))}: {issue['msg']}" for issue in error.errors())


class RecordFile:
    """A file of job records, checked when opened: CSV, JSON lines (`.jsonl`), or JSON holding an
    array of job records or a `{"teams": [...], "jobs": [...]}` document (whose teams, with budgets
    and descriptions, are ingested with the jobs).

    Raises:
        InvalidAccountingInput: For a missing file, another file type, malformed JSON or a JSON
            document of another shape (`frames` raises it for malformed CSV or missing columns).

    Example:
        ```python
        records = RecordFile(Path("mock_jobs.json"))
        records.teams, [len(frame) for frame in records.frames(chunk_size=1000)]
        ```
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.teams: list[Team] = []
        self._records: list[dict[str, Any]] | None = None
        if not path.is_file():
            raise InvalidAccountingInput(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix not in (".csv", ".json", ".jsonl", ".ndjson"):
            raise InvalidAccountingInput(f"{path}: use a .csv, .json or .jsonl file")
        if suffix == ".json":
            self._read_document(_read_json(path))

    def _read_document(self, document: Any) -> None:
        if isinstance(document, dict) and "jobs" in document:
            try:
                parsed = JobDocument.model_validate(document)
            except ValidationError as error:
                raise InvalidAccountingInput(f"{self.path}: {_validation_message(error)}") from None
            self.teams, document = parsed.teams, parsed.jobs
        if not isinstance(document, list) or not all(isinstance(record, dict) for record in document):
            raise InvalidAccountingInput(f"{self.path}: expected {DOCUMENT_SHAPE}")
        self._records = document

    def _raw_frames(self, chunk_size: int) -> Iterator[pd.DataFrame]:
        if self._records is not None:
            for offset in range(0, len(self._records), chunk_size):
                yield pd.DataFrame.from_records(self._records[offset : offset + chunk_size])
        elif self.path.suffix.lower() == ".csv":
            yield from pd.read_csv(
                self.path, chunksize=chunk_size, dtype="string", keep_default_na=False, na_values=[""]
            )
        else:
            yield from pd.read_json(self.path, lines=True, chunksize=chunk_size, dtype=False)

    def frames(self, chunk_size: int) -> Iterator[pd.DataFrame]:
        """The job records in chunks of `chunk_size`, each with every column of `RECORD_FIELDS`."""
        try:
            for frame in self._raw_frames(chunk_size):
                yield require_columns(frame, str(self.path))
        except InvalidAccountingInput:
            raise
        except (ValueError, UnicodeDecodeError) as error:
            raise InvalidAccountingInput(
                f"{self.path}: not readable as {self.path.suffix.lstrip('.').upper()} ({error})"
            ) from None


def load_teams(path: Path) -> list[Team]:
    """The teams of a teams file (a JSON array of teams); none when the file does not exist.

    Raises:
        InvalidAccountingInput: For malformed JSON or a team without a name.

    Example:
        >>> [team.budget_usd for team in load_teams(Path(__file__).with_name("sample") / "teams.json")]
        [400.0, 250.0, 600.0]
    """
    if not path.exists():
        return []
    try:
        return [Team.model_validate(team) for team in _read_json(path)]
    except (TypeError, ValidationError) as error:
        detail = _validation_message(error) if isinstance(error, ValidationError) else str(error)
        raise InvalidAccountingInput(
            f"{path}: expected a JSON array of teams (name, description, budget_usd): {detail}"
        ) from None


def http_frames(
    url: str, client: httpx.Client, start: datetime, end: datetime, max_pages: int = 10_000
) -> Iterator[pd.DataFrame]:
    """Job records from a paginated JSON endpoint: each page is `{"items": [...], "next": url|null}`.

    The first request asks for the window (`?start=...&end=...`, ISO 8601 UTC); the `next` links
    carry on from there. A feed that ignores the window sends everything, which upserts unchanged.

    Raises:
        httpx.HTTPStatusError: For an error answer (5xx ones are retried by the task).
        InvalidAccountingInput: For a page that is not of that shape, or records without every
            column of `RECORD_FIELDS`.
    """
    next_url: str | None = url
    params: dict[str, str] | None = {
        "start": start.astimezone(timezone.utc).isoformat(),
        "end": end.astimezone(timezone.utc).isoformat(),
    }
    for _ in range(max_pages):
        if next_url is None:
            return
        response = client.get(next_url, params=params)
        params = None
        response.raise_for_status()
        try:
            page = response.json()
        except ValueError:
            page = None
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise InvalidAccountingInput(f"{next_url}: expected {{'items': [...], 'next': ...}}")
        if page["items"]:
            yield require_columns(pd.DataFrame.from_records(page["items"]), next_url)
        next_url = page.get("next") and str(response.url.join(page["next"]))
    raise InvalidAccountingInput(f"{url}: more than {max_pages} pages")
