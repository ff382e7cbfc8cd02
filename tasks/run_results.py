"""The result files Prefect persisted for a flow run (its own and its task runs'), and their removal.

`submit-job` persists its plan, record, stage and submit results so that a resumed run skips
them; Prefect never removes them. Cleanup removes them with the job records they served.

Removing an ended run's results is safe because no result file is shared between flow runs:
every cached task is keyed by its flow run (`tasks.policies.once_per_flow_run`); a cache
policy without the run in its key would have to change that.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

import fsspec
from fsspec import AbstractFileSystem
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.filesystems import LocalFileSystem, RemoteFileSystem, WritableFileSystem
from prefect.results import ResultRecordMetadata, get_default_result_storage
from prefect.settings import get_current_settings

from tasks.prefect_api import read_every


@dataclass(frozen=True)
class ResultFile:
    """One persisted result: its key and, when this project may delete it, its file system and path."""

    storage_key: str
    filesystem: AbstractFileSystem | None
    path: str
    kept_because: str | None = None

    def exists(self) -> bool:
        """Whether the file is there (a result that was not persisted has a key but no file)."""
        return self.filesystem is not None and self.filesystem.exists(self.path)

    def delete(self) -> None:
        """Delete the file; one already gone is fine."""
        if self.filesystem is not None:
            with suppress(FileNotFoundError):
                self.filesystem.rm(self.path)


def locate(metadata: ResultRecordMetadata) -> ResultFile:
    """Where a result lies, resolved as Prefect resolves it, and only in this project's result
    storage: the default local path or the default storage block, a `LocalFileSystem` or a
    `RemoteFileSystem` (fsspec: S3, GCS, ...). A key outside its storage is refused.

    Args:
        metadata: The result's metadata, as its state holds it.

    Returns:
        The file; with no file system (and why) when it is not to be deleted.
    """
    key = str(metadata.storage_key)
    if ".." in key.split("/"):
        return ResultFile(key, None, key, "a key with '..' is refused")
    if metadata.storage_block_id is None:  # the default local storage writes absolute keys
        storage: WritableFileSystem = LocalFileSystem(basepath=str(get_current_settings().results.local_storage_path))
    else:
        storage = get_default_result_storage(_sync=True)  # type: ignore[call-arg]
        if storage._block_document_id != metadata.storage_block_id:
            return ResultFile(key, None, key, f"block {metadata.storage_block_id} is not the default result storage")
    if not isinstance(storage, (LocalFileSystem, RemoteFileSystem)):
        return ResultFile(key, None, key, f"{type(storage).__name__} storage has no delete")
    try:
        path = storage._resolve_path(key)  # Prefect's own resolution, which refuses paths outside the base
    except ValueError as error:
        return ResultFile(key, None, key, str(error))
    filesystem = fsspec.filesystem("file") if isinstance(storage, LocalFileSystem) else storage.filesystem
    return ResultFile(key, filesystem, str(path))


def persisted_result_files(client: SyncPrefectClient, flow_run: FlowRun) -> list[ResultFile]:
    """The result files of a flow run and of its task runs: those that exist, and those kept
    out of reach (`filesystem` None, with the reason).

    Args:
        client: A Prefect client.
        flow_run: The flow run, as the server has it (an ended one: a suspended run still needs
            its results to resume).

    Returns:
        One entry per file, however many task runs share it (a resumed run's cached ones).

    Example:
        ```python
        with get_client(sync_client=True) as client:
            files = persisted_result_files(client, client.read_flow_run(record.flow_run_id))
        ```
    """
    task_runs = read_every(client.read_task_runs, flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    states = [flow_run.state, *(task_run.state for task_run in task_runs)]
    results = {
        (state.data.storage_block_id, state.data.storage_key): state.data
        for state in states
        if state is not None and isinstance(state.data, ResultRecordMetadata) and state.data.storage_key
    }
    files = [locate(metadata) for metadata in results.values()]
    return [file for file in files if file.filesystem is None or file.exists()]
