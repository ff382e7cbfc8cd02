"""Tapis credentials, saved as one block per system: TACC's API gateway instead of SSH.

A `TapisCredentials` block saved under a system's name (`ls6`, ...) makes that system's jobs
go through Tapis (`blocks.clusters` picks it); without one, the system is reached over SSH
with its `TaccCredentials` block.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator, model_validator

from blocks.database import load_saved
from tacc_jobs.schedulers.tapis import TapisScheduler
from tacc_jobs.staging.tapis_files import TapisFiles, files_host
from tacc_jobs.tapis.client import TACC_TENANT_URL, TapisClient

_ABSOLUTE_PATH = re.compile(r"/[A-Za-z0-9._/-]+")
_clients: dict[str, TapisClient] = {}
_clients_lock = threading.Lock()


class TapisCredentials(CredentialsBlock):
    """How to reach one TACC system through Tapis v3: the tenant, the user, the execution system.

    Save one block per system, named after it; jobs for `system="ls6"` then run through Tapis.
    Give a password, or a refresh token with the OAuth2 client's id and key (no password kept).

    Example:
        ```python
        from pydantic import SecretStr
        from blocks.tapis import TapisCredentials

        TapisCredentials(username="jdoe", password=SecretStr("..."), exec_system_id="ls6",
                         scratch_root="/scratch/01234/jdoe/tacc-orchestrator", allocation="AST12345").save("ls6")
        with TapisCredentials.load("ls6").get_client() as tapis:
            print(tapis.access_token() is not None)
        ```
    """

    _block_type_name = "Tapis Credentials"
    _block_type_slug = "tapis-credentials"

    base_url: str = Field(
        default=TACC_TENANT_URL, pattern=r"^https?://[A-Za-z0-9.:-]+/?$", description="Tapis tenant base URL"
    )
    username: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="Tapis (TACC) user name")
    password: SecretStr | None = Field(default=None, description="TACC password (password grant)")
    refresh_token: SecretStr | None = Field(
        default=None, description="A Tapis refresh token, used with the client id and key"
    )
    client_id: SecretStr | None = Field(default=None, description="OAuth2 client id (needed to use a refresh token)")
    client_key: SecretStr | None = Field(default=None, description="OAuth2 client key (secret)")
    exec_system_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,80}$", description="Tapis execution system id, e.g. ls6")
    scratch_root: str = Field(description="Absolute directory on the execution system for datasets, apps and jobs")
    allocation: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="TACC allocation (sbatch -A)"
    )
    dataset_source_url: str | None = Field(
        default=None,
        pattern=r"^tapis://[A-Za-z0-9._-]+(/[A-Za-z0-9._/-]*)?$",
        description="Where Tapis can also read the datasets, one directory per dataset id (e.g. tapis://corral/projects/vlass); "
        "large datasets then move by a Files API transfer request instead of uploads",
    )
    transfer_threshold_mb: float = Field(
        default=1024.0,
        ge=0,
        description="Datasets this large or larger move by a transfer request (with dataset_source_url)",
    )
    retries: int = Field(default=5, ge=0, le=20, description="Retries of a call answered 429/5xx or dropped")
    backoff_seconds: float = Field(default=1.0, gt=0, description="First retry delay; it doubles each retry")
    refresh_margin_seconds: float = Field(
        default=60.0, ge=0, description="Renew the access token this long before it expires"
    )

    @field_validator("scratch_root")
    @classmethod
    def _absolute_plain_path(cls, value: str) -> str:
        if not _ABSOLUTE_PATH.fullmatch(value) or ".." in value:
            raise ValueError("scratch_root must be an absolute path of letters, digits, '.', '_', '-' and '/'")
        return value

    @model_validator(mode="after")
    def _can_get_tokens(self) -> TapisCredentials:
        if self.password is None and self.refresh_token is None:
            raise ValueError("give a password, or a refresh_token with client_id and client_key")
        if self.password is None and (self.client_id is None or self.client_key is None):
            raise ValueError("a refresh_token needs client_id and client_key")
        return self

    @property
    def host(self) -> str:
        """Where this system's transfers go (tenant and execution system): bandwidth is measured per host."""
        return files_host(self.base_url, self.exec_system_id)

    def get_client(self) -> TapisClient:
        """A new client of the tenant as this user (close it, or use `with`).

        Example:
            ```python
            with TapisCredentials.load("ls6").get_client() as tapis: ...
            ```
        """
        return TapisClient(
            self.base_url,
            self.username,
            password=self.password,
            refresh_token=self.refresh_token,
            client_id=self.client_id.get_secret_value() if self.client_id else None,
            client_key=self.client_key,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
            refresh_margin_seconds=self.refresh_margin_seconds,
        )

    def shared_client(self) -> TapisClient:
        """One client per saved configuration and process: its token serves every task thread.

        Example:
            ```python
            TapisCredentials.load("ls6").shared_client().list_files("ls6", "/scratch/01234/jdoe")
            ```
        """
        fields = self.model_dump(mode="json", exclude={"block_type_slug"})
        fields.update(
            {
                name: getattr(self, name).get_secret_value()
                for name in ("password", "refresh_token", "client_id", "client_key")
                if getattr(self, name) is not None
            }
        )
        key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
        with _clients_lock:
            if key not in _clients:
                _clients[key] = self.get_client()
            return _clients[key]

    def scheduler(self, system: str) -> TapisScheduler:
        """The Jobs API scheduler of `system` on this block's execution system.

        Example:
            ```python
            TapisCredentials.load("ls6").scheduler("ls6").states({"8a1c...-007": "tacc-6f1c..."})
            ```
        """
        return TapisScheduler(self.shared_client(), system, self.exec_system_id, self.scratch_root, self.allocation)

    def transfer(self) -> TapisFiles:
        """Staging to the execution system through the Files API.

        Example:
            ```python
            stage(inventory, TapisCredentials.load("ls6").transfer(), destination)
            ```
        """
        return TapisFiles(
            self.shared_client(),
            self.exec_system_id,
            source_url=self.dataset_source_url,
            transfer_threshold_bytes=int(self.transfer_threshold_mb * 1e6),
        )


def saved_tapis_credentials(system: str) -> TapisCredentials | None:
    """The `TapisCredentials` block saved under the system's name, or None (then SSH serves it).

    Example:
        ```python
        saved_tapis_credentials("ls6") is not None  # True when ls6 goes through Tapis
        ```
    """
    return None if system == "local" else load_saved(TapisCredentials, system)
