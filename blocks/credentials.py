"""TACC login credentials, saved as one block per system (`ls6`, `frontera`, `stampede3`, `vista`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from prefect.blocks.abstract import CredentialsBlock
from pydantic import Field, SecretStr, field_validator

from tacc_jobs.ssh import SshConnection

_SCRATCH_ROOT = re.compile(r"/[A-Za-z0-9._/-]+")


class TaccCredentials(CredentialsBlock):
    """How to log in to one TACC system, and where its scratch is.

    Save one block per system, named after it; jobs for `system="ls6"` use the block `ls6`.

    Example:
        ```python
        from blocks.credentials import TaccCredentials

        TaccCredentials(
            username="jdoe", host="ls6.tacc.utexas.edu", private_key_path="~/.ssh/id_ed25519",
            allocation="AST12345", scratch_root="/scratch/01234/jdoe/tacc-orchestrator",
        ).save("ls6")
        with TaccCredentials.load("ls6").get_client() as connection:
            print(connection.run(["hostname"]).stdout)
        ```
    """

    _block_type_name = "TACC Credentials"
    _block_type_slug = "tacc-credentials"

    username: str = Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$", description="TACC user name")
    host: str = Field(pattern=r"^[A-Za-z0-9.-]+$", description="Login host, e.g. ls6.tacc.utexas.edu")
    port: int = Field(default=22, ge=1, le=65535, description="SSH port of the login host")
    private_key: SecretStr | None = Field(default=None, description="Private key (OpenSSH format)")
    private_key_path: Path | None = Field(default=None, description="Path to a private key on the worker")
    allocation: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,64}$", description="TACC allocation (project) for sbatch -A"
    )
    known_hosts: str | None = Field(default=None, description="known_hosts lines for the login host")
    scratch_root: str | None = Field(default=None, description="Directory on the cluster for datasets and jobs")
    control_path: str | None = Field(
        default=None,
        description="ControlPath of an SSH master opened after an MFA login (e.g. ~/.ssh/cm-%C); "
        "commands reuse it instead of logging in",
    )

    @field_validator("scratch_root")
    @classmethod
    def _absolute_plain_path(cls, value: str | None) -> str | None:
        if value is not None and (not _SCRATCH_ROOT.fullmatch(value) or ".." in value):
            raise ValueError("scratch_root must be an absolute path of letters, digits, '.', '_', '-' and '/'")
        return value

    def get_client(self, session_slot: Callable[[], AbstractContextManager[object]] = nullcontext) -> SshConnection:
        """One multiplexed SSH connection to the login host (close it, or use `with`).

        Args:
            session_slot: Entered around each remote command (a cap on concurrent sessions).
        """
        return SshConnection(
            host=self.host,
            username=self.username,
            port=self.port,
            private_key=self.private_key,
            private_key_path=self.private_key_path.expanduser() if self.private_key_path else None,
            known_hosts=self.known_hosts,
            control_path=self.control_path,
            session_slot=session_slot,
        )
