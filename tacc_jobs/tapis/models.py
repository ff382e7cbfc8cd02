"""Pydantic models of what the project sends to and reads from Tapis v3 (camelCase on the wire).

Only the fields the project uses are declared; Tapis's own schemas (tapipy's
`openapi_v3-*.yml`) are the reference, and the test server validates every call against them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic.alias_generators import to_camel

TapisStatus = Literal[
    "PENDING",
    "PROCESSING_INPUTS",
    "STAGING_INPUTS",
    "STAGING_JOB",
    "SUBMITTING_JOB",
    "QUEUED",
    "RUNNING",
    "ARCHIVING",
    "BLOCKED",
    "PAUSED",
    "FINISHED",
    "CANCELLED",
    "FAILED",
]


class TapisModel(BaseModel):
    """camelCase on the wire, snake_case in Python; unknown fields ignored."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    def wire(self) -> dict[str, object]:
        """The JSON body Tapis expects: camelCase keys, unset fields left out.

        Example:
            ```python
            client.request("POST", "/v3/jobs/submit", "submit", json=request.wire())
            ```
        """
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class AccessToken(BaseModel):
    """A Tapis access token and when it expires."""

    value: SecretStr
    expires_at: datetime


class KeyValuePair(TapisModel):
    """An environment variable of a job."""

    key: str
    value: str


class JobArgSpec(TapisModel):
    """One argument (here: one scheduler option such as `-A AST12345`)."""

    name: str | None = None
    arg: str


class LogConfig(TapisModel):
    """Where the job's stdout and stderr go, relative to its output directory."""

    stdout_filename: str
    stderr_filename: str


class JobParameterSet(TapisModel):
    """Scheduler options, environment variables and log files of a job."""

    scheduler_options: list[JobArgSpec] = Field(default_factory=list)
    env_variables: list[KeyValuePair] = Field(default_factory=list)
    log_config: LogConfig | None = None


class JobFileInput(TapisModel):
    """A file or directory Tapis stages into the job's input directory before it runs."""

    name: str
    source_url: str
    target_path: str


class DeliveryTarget(TapisModel):
    """Where Tapis delivers a notification."""

    delivery_method: Literal["WEBHOOK", "EMAIL"] = "WEBHOOK"
    delivery_address: str


class JobSubscription(TapisModel):
    """A subscription to the job's events (status changes, delivered to a webhook)."""

    description: str | None = None
    enabled: bool = True
    event_category_filter: Literal["JOB_NEW_STATUS", "ALL"] = "JOB_NEW_STATUS"
    delivery_targets: list[DeliveryTarget]
    ttlminutes: int | None = None


class JobSubmitRequest(TapisModel):
    """The body of `POST /v3/jobs/submit` (Tapis's `ReqSubmitJob`)."""

    name: str
    app_id: str
    app_version: str
    description: str | None = None
    exec_system_id: str
    exec_system_exec_dir: str
    exec_system_input_dir: str
    exec_system_output_dir: str
    exec_system_logical_queue: str | None = None
    archive_system_id: str
    archive_system_dir: str
    archive_on_app_error: bool = True
    node_count: int | None = None
    cores_per_node: int | None = None
    max_minutes: int | None = None
    file_inputs: list[JobFileInput] = Field(default_factory=list)
    parameter_set: JobParameterSet
    tags: list[str] = Field(default_factory=list)
    subscriptions: list[JobSubscription] = Field(default_factory=list)


class TapisJob(TapisModel):
    """A job as the Jobs API reports it (`Job` in its schema), the fields the project reads."""

    uuid: str
    name: str
    status: TapisStatus
    owner: str | None = None
    condition: str | None = None
    last_message: str | None = None
    created: datetime | None = None
    ended: datetime | None = None
    exec_system_exec_dir: str | None = None
    exec_system_logical_queue: str | None = None
    node_count: int | None = None
    parameter_set: str | None = Field(default=None, description="JSON text of the job's parameter set")
    remote_job_id: str | None = None
    remote_result_info: str | None = None
    remote_submitted: datetime | None = None
    remote_started: datetime | None = None
    remote_ended: datetime | None = None


class JobHistoryEvent(TapisModel):
    """One event of a job's history (`JobHistoryDisplayDTO`)."""

    event: str
    created: datetime
    event_detail: str | None = None
    description: str | None = None


class FileInfo(TapisModel):
    """A file or directory as the Files API lists it."""

    name: str
    path: str
    type: Literal["file", "dir", "symbolic_link", "other", "unknown"] = "file"
    size: int = 0
    last_modified: datetime | None = None


class TransferElement(TapisModel):
    """One source and destination of a Files API transfer request (`ReqTransferElement`)."""

    source_uri: str = Field(alias="sourceURI")
    destination_uri: str = Field(alias="destinationURI")
    transfer_type: Literal["TRANSFER"] = Field(
        default="TRANSFER", description="Sent: the spec's default for it is null"
    )


class TransferTask(TapisModel):
    """A Files API transfer task, as far as its progress and outcome go."""

    uuid: str
    status: Literal["ACCEPTED", "STAGED", "IN_PROGRESS", "COMPLETED", "CANCELLED", "FAILED", "FAILED_OPT", "PAUSED"]
    estimated_total_bytes: int | None = None
    total_bytes_transferred: int | None = None
    error_message: str | None = None

    @property
    def ended(self) -> bool:
        """Whether the transfer has finished, well or not."""
        return self.status in {"COMPLETED", "CANCELLED", "FAILED", "FAILED_OPT"}


class AppDefinition(TapisModel):
    """The body of `POST /v3/apps` (`ReqPostApp`) and, less `id` and `version`, of `PUT`."""

    id: str
    version: str
    description: str
    runtime: Literal["ZIP", "SINGULARITY", "DOCKER"] = "ZIP"
    container_image: str
    job_type: Literal["BATCH", "FORK"] = "BATCH"
    job_attributes: dict[str, object] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list)
