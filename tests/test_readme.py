"""Every fenced Python block of the README runs as written, so README and code cannot drift apart.

The blocks run in order, each in a fresh namespace, from the repository root, against the
embedded default (a real Prefect server from the test harness). Blocks that save blocks to the
server (the PostgreSQL and TACC examples) have what they saved removed afterwards, so the rest
of the suite does not run against example.org.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prefect import get_client

from tacc_jobs.models import JobStatus

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def readme_examples() -> list[tuple[str, str]]:
    """(heading above it, code) for each ```python block of the README."""
    text = README.read_text()
    examples = []
    for match in FENCE.finditer(text):
        heading = re.findall(r"^#+ (.+)$", text[: match.start()], re.M)[-1]
        examples.append((heading, match.group(1)))
    return examples


def test_the_readme_has_python_examples() -> None:
    assert len(readme_examples()) >= 3


@pytest.mark.parametrize(("heading", "code"), readme_examples(), ids=[heading for heading, _ in readme_examples()])
@pytest.mark.usefixtures("prefect_server")
def test_readme_example_runs_as_written(heading: str, code: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(README.parent)
    with get_client(sync_client=True) as client:
        before = {(block.id, block.updated) for block in client.read_block_documents()}
    namespace: dict[str, object] = {"__name__": "readme_example"}
    try:
        exec(compile(code, f"README.md ({heading})", "exec"), namespace)
    finally:
        with get_client(sync_client=True) as client:
            for block in client.read_block_documents():
                if (block.id, block.updated) not in before:
                    client.delete_block_document(block.id)
    record = namespace.get("record")
    if record is not None:  # the lifecycle example ends with the cancelled job
        assert record.status in (JobStatus.QUEUING, JobStatus.RUNNING)
        assert namespace["cancelled"].status is JobStatus.CANCELLED
