"""One multiplexed OpenSSH connection to a cluster login node (TACC requires MFA: log in once).

Commands are argv lists; each argument is quoted with `shlex.quote` for the remote shell.
The first command opens a ControlMaster; later commands reuse it until `close()`. With
`control_path`, commands reuse a master an operator opened interactively (answering MFA).
Each command (a session on the master) runs inside `session_slot()`, so a cap on concurrent
sessions per login host can span processes (Prefect's global concurrency limits do).

A private key given as text never touches the disk: it goes through a pipe into an `ssh-agent`
of the connection's own (only its public half is written, to pick it). `close()` stops the
agent; an agent whose process was killed (SIGKILL leaves no chance to close) is stopped by the
next connection made on the host, with its directory.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

from pydantic import SecretStr

from tacc_jobs.exceptions import (
    LoginNodeUnreachable,
    LoginRequired,
    PermanentSchedulerError,
    SchedulerError,
    TransientSchedulerError,
)
from tacc_jobs.processes import process_alive

SSH_CONNECTION_FAILED = 255
DIR_PREFIX, OWNER, AGENT_PID, AGENT_SOCKET = "tacc-ssh-", "owner.pid", "agent.pid", "agent.sock"
_REFUSED_LOGIN = re.compile(
    r"Host key verification failed|Permission denied|REMOTE HOST IDENTIFICATION HAS CHANGED|No such file or directory"
)
# the key was accepted and only the interactive step (MFA) is left; "(publickey,keyboard-interactive)" is a refused key
_INTERACTIVE_LOGIN = re.compile(r"Permission denied \(keyboard-interactive\)")


def ssh_failure(target: str, stderr: str) -> SchedulerError:
    """What an `ssh` that exited 255 means: a login only a person can make (MFA) and an
    unreachable host are waited out; a refused key, host key or user name is permanent.

    Example:
        >>> type(ssh_failure("jdoe@ls6", "jdoe@ls6: Permission denied (keyboard-interactive).")).__name__
        'LoginRequired'
        >>> type(ssh_failure("jdoe@ls6", "jdoe@ls6: Permission denied (publickey,keyboard-interactive).")).__name__
        'PermanentSchedulerError'
    """
    message = f"ssh {target}: {stderr.strip() or 'connection failed'}"
    if _INTERACTIVE_LOGIN.search(stderr):
        return LoginRequired(f"{message} (the login node asks for an interactive login: log in once again)")
    if _REFUSED_LOGIN.search(stderr):
        return PermanentSchedulerError(f"{message} (check the block's key, known_hosts and user name)")
    return LoginNodeUnreachable(message)


def stop_orphaned_agents() -> None:
    """Stop the agents, and remove the directories, of connections whose process died unclosed."""
    for directory in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*"):
        try:
            if directory.stat().st_uid != os.getuid() or directory.stat().st_mode & 0o077:
                continue  # not one of ours
            owner = int((directory / OWNER).read_text())
        except (OSError, ValueError):
            continue
        if process_alive(owner):
            continue
        try:
            agent = int((directory / AGENT_PID).read_text())
            command = Path(f"/proc/{agent}/cmdline").read_bytes().split(b"\0")
            if command[:4] == [b"ssh-agent", b"-D", b"-a", str(directory / AGENT_SOCKET).encode()]:  # not a reused pid
                os.kill(agent, signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(directory, ignore_errors=True)


class SshConnection:
    """A cluster login over OpenSSH with ControlMaster/ControlPersist.

    Example:
        ```python
        with TaccCredentials.load("ls6").get_client() as connection:
            connection.run(["squeue", "--me"]).stdout
        ```
    """

    def __init__(
        self,
        host: str,
        username: str,
        port: int = 22,
        private_key: SecretStr | None = None,
        private_key_path: Path | None = None,
        known_hosts: str | None = None,
        connect_timeout: float = 20.0,
        command_timeout: float = 120.0,
        control_persist_seconds: int = 600,
        control_path: str | None = None,
        session_slot: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self.host, self.username, self.port = host, username, port
        self.session_slot = session_slot
        self.command_timeout = command_timeout
        self.commands_run = 0
        stop_orphaned_agents()
        self._dir = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
        os.chmod(self._dir, 0o700)
        (self._dir / OWNER).write_text(str(os.getpid()))
        self._agent: subprocess.Popen[bytes] | None = None
        self._owns_master = control_path is None
        options = {
            "BatchMode": "yes",
            "ConnectTimeout": str(int(connect_timeout)),
            "ControlMaster": "auto",
            "ControlPath": os.path.expanduser(control_path) if control_path else str(self._dir / "cm-%C"),
            "ControlPersist": str(control_persist_seconds),
            "StrictHostKeyChecking": "yes",
            "ServerAliveInterval": "30",
            "LogLevel": "ERROR",
        }
        if known_hosts:
            options["UserKnownHostsFile"] = str(self._write_private("known_hosts", known_hosts + "\n"))
        identity = private_key_path
        if private_key:
            identity = self._start_agent(private_key)
            options["IdentityAgent"] = str(self._dir / AGENT_SOCKET)
        if identity:
            options.update(IdentityFile=str(identity), IdentitiesOnly="yes")
        self._options = options
        self._base = self._argv(options)

    def _argv(self, options: dict[str, str]) -> list[str]:
        return ["ssh", "-p", str(self.port), *(f"-o{key}={value}" for key, value in options.items()), self.target]

    @property
    def ssh_argv(self) -> list[str]:
        """The ssh command with every option (multiplexing, keys), without the target."""
        return self._base[:-1]

    @property
    def target(self) -> str:
        """`user@host` of the login node."""
        return f"{self.username}@{self.host}"

    def open_master(self, persist: str = "12h") -> int:
        """Log in once, as a person (answering the MFA prompt on this terminal), and leave the
        master connection running in the background for `persist`: every later command of
        every process whose block names the same `control_path` rides it.

        Returns:
            ssh's exit status (0 when the master is up).

        Example:
            ```python
            with TaccCredentials.load("ls6").get_client() as connection:
                connection.open_master()  # asks for the TACC token code
            ```
        """
        options = {**self._options, "BatchMode": "no", "ControlMaster": "yes", "ControlPersist": persist}
        argv = self._argv(options)
        return subprocess.run([*argv[:-1], "-fN", argv[-1]], timeout=300).returncode

    def _start_agent(self, private_key: SecretStr) -> Path:
        """An ssh-agent holding the key (given on its standard input); the public half's path."""
        socket = self._dir / AGENT_SOCKET
        self._agent = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(socket)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        (self._dir / AGENT_PID).write_text(str(self._agent.pid))
        for _ in range(100):
            if socket.exists():
                break
            time.sleep(0.05)
        environment = {**os.environ, "SSH_AUTH_SOCK": str(socket)}
        added = subprocess.run(
            ["ssh-add", "-q", "-"],
            input=private_key.get_secret_value().strip().encode() + b"\n",
            env=environment,
            capture_output=True,
            timeout=30,
        )
        if added.returncode != 0:
            self.close()
            raise PermanentSchedulerError(
                f"ssh-add refused the private key: {added.stderr.decode(errors='replace').strip()}"
            )
        public = subprocess.run(
            ["ssh-add", "-L"], env=environment, capture_output=True, text=True, timeout=30, check=True
        )
        return self._write_private("id_key.pub", public.stdout)

    def _write_private(self, name: str, text: str) -> Path:
        path = self._dir / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        return path

    def run(
        self, argv: Sequence[str], stdin: str | None = None, timeout: float | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run one remote command; every argument is quoted for the remote shell.

        Raises:
            LoginNodeUnreachable: When SSH itself fails (connection refused, reset, timed out),
                or the login node asks for an interactive login (`LoginRequired`).
            TransientSchedulerError: When the command outlives its timeout.
            PermanentSchedulerError: When the login is refused (key, host key, user name).
        """
        command = [*self._base, "--", shlex.join(argv)]
        self.commands_run += 1
        try:
            with self.session_slot():
                completed = subprocess.run(
                    command, input=stdin, capture_output=True, text=True, timeout=timeout or self.command_timeout
                )
        except subprocess.TimeoutExpired:
            raise TransientSchedulerError(f"ssh {self.host}: {argv[0]} timed out") from None
        if completed.returncode == SSH_CONNECTION_FAILED:
            raise ssh_failure(f"{self.username}@{self.host}:{self.port}", completed.stderr)
        return completed

    def stream(self, argv: Sequence[str]) -> Iterator[str]:
        """Run one remote command and yield its output lines as they arrive (memory stays flat).

        Raises:
            SchedulerError: When SSH itself fails, as `run` says.
            subprocess.CalledProcessError: When the command exits non-zero (with its stderr).
        """
        self.commands_run += 1
        with self.session_slot():
            process = subprocess.Popen(
                [*self._base, "--", shlex.join(argv)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            assert process.stdout is not None and process.stderr is not None
            try:
                for line in process.stdout:
                    yield line.rstrip("\n")
            finally:
                process.stdout.close()
                stderr = process.stderr.read()
                returncode = process.wait(timeout=self.command_timeout)
        if returncode == SSH_CONNECTION_FAILED:
            raise ssh_failure(f"{self.username}@{self.host}:{self.port}", stderr)
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, list(argv), stderr=stderr)

    def close(self) -> None:
        """Close the master connection this object opened, and delete the key material.

        A master opened by an operator (`control_path`, after an MFA login) is left open.
        """
        if self._owns_master:
            subprocess.run([*self.ssh_argv, "-O", "exit", self.target], capture_output=True, timeout=10)
        if self._agent is not None:
            self._agent.kill()
            self._agent.wait()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> SshConnection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
