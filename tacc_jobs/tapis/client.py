"""A thin client of a Tapis v3 tenant over httpx: tokens, retries, errors, one method per endpoint.

Why not tapipy: it installs beside Prefect 3.8, but pins openapi-core 0.16 and unpickles spec
objects at import, looks tenants up through the Tenants API to refresh a token, and neither
retries nor lets the caller bound what it prints; every behaviour below would have to be wrapped
around it anyway. These calls are checked against the same OpenAPI specifications tapipy ships
(the test server validates every request and response against them).

Tokens: an access token comes from the Authenticator (`POST /v3/oauth2/tokens`, password grant,
or refresh-token grant with the client's id and key) and is renewed `refresh_margin_seconds`
before it expires; a 401 renews it once and repeats the call. Tokens travel only in the
`X-Tapis-Token` header: they are never logged, and secrets are masked in every error message.
Transient answers (429, 5xx, a dropped connection) are retried with exponential backoff
(`Retry-After` honoured); any other 4xx fails at once with the API's own message.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from tacc_jobs.exceptions import TapisRequestError, TapisUnavailableError
from tacc_jobs.tapis.models import (
    AccessToken,
    AppDefinition,
    FileInfo,
    JobHistoryEvent,
    JobSubmitRequest,
    TapisJob,
    TransferElement,
    TransferTask,
)

logger = logging.getLogger(__name__)
TACC_TENANT_URL = "https://tacc.tapis.io"
TOKENS_PATH = "/v3/oauth2/tokens"
SEARCH_PAGE = 500


def relative_path(path: str) -> str:
    """A path as the Files API takes it: relative to the system's root directory (`/` at TACC).

    Example:
        >>> relative_path("/scratch/u//jobs/../datasets/")
        'scratch/u/datasets'
    """
    return posixpath.normpath(path).lstrip("/")


def quoted_path(path: str) -> str:
    """A file path for a Tapis URL: relative to the system's root, each segment percent-encoded.

    Example:
        >>> quoted_path("/scratch/u/my data/a.csv")
        'scratch/u/my%20data/a.csv'
    """
    return quote(relative_path(path), safe="/")


class TapisClient:
    """One Tapis tenant, as one user: tokens, retries and the endpoints the project uses.

    Example:
        ```python
        with TapisClient("https://tacc.tapis.io", "jdoe", password=SecretStr("...")) as tapis:
            tapis.get_job("8a1c...-007")
        ```
    """

    def __init__(
        self,
        base_url: str,
        username: str,
        password: SecretStr | None = None,
        refresh_token: SecretStr | None = None,
        client_id: str | None = None,
        client_key: SecretStr | None = None,
        retries: int = 5,
        backoff_seconds: float = 1.0,
        max_backoff_seconds: float = 60.0,
        refresh_margin_seconds: float = 60.0,
        timeout_seconds: float = 60.0,
    ) -> None:
        if password is None and refresh_token is None:
            raise ValueError("Tapis needs a password or a refresh token (with the client id and key)")
        if refresh_token is not None and password is None and not (client_id and client_key):
            raise ValueError("a refresh token is exchanged with the client's id and key: set client_id and client_key")
        self.base_url, self.username = base_url.rstrip("/"), username
        self._password, self._refresh_token, self._client_id, self._client_key = (
            password,
            refresh_token,
            client_id,
            client_key,
        )
        self.retries, self.backoff_seconds, self.max_backoff_seconds = retries, backoff_seconds, max_backoff_seconds
        self.refresh_margin = timedelta(seconds=refresh_margin_seconds)
        self._token: AccessToken | None = None
        self._token_lock = threading.Lock()
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_seconds, follow_redirects=False)

    # --- tokens and transport -------------------------------------------------------------

    def _secrets(self) -> list[str]:
        values = [self._password, self._refresh_token, self._client_key, self._token.value if self._token else None]
        return [secret.get_secret_value() for secret in values if secret is not None and secret.get_secret_value()]

    def _redact(self, text: str) -> str:
        for secret in self._secrets():
            text = text.replace(secret, "**********")
        return text

    def access_token(self) -> SecretStr:
        """A valid access token, renewed when it expires within the refresh margin.

        Example:
            ```python
            tapis.access_token().get_secret_value()  # for a call this client does not make
            ```
        """
        with self._token_lock:
            if self._token is None or self._token.expires_at - datetime.now(timezone.utc) <= self.refresh_margin:
                self._token = self._new_token()
            return self._token.value

    def _forget_token(self, token: SecretStr) -> None:
        with self._token_lock:
            if self._token is not None and self._token.value == token:
                self._token = None

    def _new_token(self) -> AccessToken:
        auth = (self._client_id, self._client_key.get_secret_value()) if self._client_id and self._client_key else None
        if self._refresh_token is not None and auth is not None:
            body = {"grant_type": "refresh_token", "refresh_token": self._refresh_token.get_secret_value()}
        elif self._password is not None:
            body = {"grant_type": "password", "username": self.username, "password": self._password.get_secret_value()}
        else:
            raise ValueError("no password, and no refresh token with client credentials")
        response = self._send("POST", TOKENS_PATH, "get a token", json=body, auth=auth)
        result = response.json()["result"]
        access = result["access_token"]
        if result.get("refresh_token", {}).get("refresh_token"):
            self._refresh_token = SecretStr(result["refresh_token"]["refresh_token"])  # rotated by the refresh grant
        lifetime = timedelta(seconds=int(access.get("expires_in") or 0))
        logger.debug("Tapis token for %s renewed; expires in %s", self.username, lifetime)
        return AccessToken(value=SecretStr(access["access_token"]), expires_at=datetime.now(timezone.utc) + lifetime)

    def backoff(self, attempt: int, response: httpx.Response | None = None) -> float:
        """Seconds to wait before retry `attempt` (0-based): `Retry-After`, else exponential.

        Example:
            ```python
            time.sleep(tapis.backoff(attempt))
            ```
        """
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), self.max_backoff_seconds)
        return min(self.backoff_seconds * 2**attempt, self.max_backoff_seconds)

    def _error_message(self, what: str, response: httpx.Response) -> str:
        try:
            message = str(response.json().get("message") or "").strip()
        except ValueError:
            message = response.text.strip()[:500]
        return self._redact(f"Tapis could not {what}: HTTP {response.status_code}: {message or response.reason_phrase}")

    def _send(
        self, method: str, path: str, what: str, token: SecretStr | None = None, idempotent: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """One call, retried on 429, 5xx and dropped connections; a 4xx raises at once. A call
        that is not idempotent is retried only on 429 (refused before it was served): after a
        5xx or a dropped connection it may have been served, and the caller must look first."""
        headers = {"X-Tapis-Token": token.get_secret_value()} if token is not None else {}
        attempt = -1
        while True:
            attempt += 1
            try:
                response = self._http.request(method, path, headers=headers, **kwargs)
            except httpx.TransportError as error:
                if attempt == self.retries or not idempotent:
                    raise TapisUnavailableError(
                        self._redact(f"Tapis could not {what}: {type(error).__name__}: {error}")
                    ) from None
                delay = self.backoff(attempt)
                logger.warning("Tapis %s: %s; retrying in %.1f s", what, type(error).__name__, delay)
                time.sleep(delay)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == self.retries or (response.status_code != 429 and not idempotent):
                    raise TapisUnavailableError(self._error_message(what, response))
                delay = self.backoff(attempt, response)
                logger.warning("Tapis %s: HTTP %d; retrying in %.1f s", what, response.status_code, delay)
                time.sleep(delay)
                continue
            if response.status_code >= 400:
                raise TapisRequestError(self._error_message(what, response), response.status_code)
            return response

    def request(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        """An authenticated call; a 401 (a token expired or revoked early) renews the token once.

        Raises:
            TapisRequestError: Tapis refused the request (4xx), with its message.
            TapisUnavailableError: Tapis kept answering 429/5xx, or could not be reached.

        Example:
            ```python
            tapis.request("GET", "/v3/jobs/list", "list jobs").json()["result"]
            ```
        """
        token = self.access_token()
        try:
            return self._send(method, path, what, token=token, **kwargs)
        except TapisRequestError as error:
            if error.status_code != 401:
                raise
            logger.info("Tapis answered 401 to %s; renewing the token once", what)
            self._forget_token(token)
            return self._send(method, path, what, token=self.access_token(), **kwargs)

    def request_unless(
        self, status_code: int, method: str, path: str, what: str, **kwargs: Any
    ) -> httpx.Response | None:
        """`request`, or None when Tapis answers `status_code` (404: not there; 409: done already).

        Example:
            ```python
            tapis.request_unless(404, "GET", "/v3/apps/tacc-orch-alphacal/1.0", "read app") is None
            ```
        """
        try:
            return self.request(method, path, what, **kwargs)
        except TapisRequestError as error:
            if error.status_code != status_code:
                raise
            return None

    def close(self) -> None:
        """Close the HTTP connections.

        Example:
            ```python
            tapis.close()
            ```
        """
        self._http.close()

    def __enter__(self) -> TapisClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- Jobs -----------------------------------------------------------------------------

    def submit_job(self, request: JobSubmitRequest) -> TapisJob:
        """`POST /v3/jobs/submit`, not repeated after a 5xx or a dropped connection (the job may
        exist: `TapisScheduler.submit` searches for it before it submits again).

        Example:
            ```python
            tapis.submit_job(JobSubmitRequest(name="tacc-0f...", app_id="tacc-orch-alphacal", ...)).uuid
            ```
        """
        response = self.request(
            "POST", "/v3/jobs/submit", f"submit job {request.name}", idempotent=False, json=request.wire()
        )
        return TapisJob.model_validate(response.json()["result"])

    def search_jobs(self, conditions: list[str], limit: int = SEARCH_PAGE) -> Iterator[TapisJob]:
        """`POST /v3/jobs/search` with every attribute, page by page (one call per `limit` jobs).

        Example:
            ```python
            list(tapis.search_jobs(["(name = 'tacc-0f1e...')"]))
            ```
        """
        skip = 0
        while True:
            params = {"select": "allAttributes", "limit": limit, "skip": skip, "orderBy": "created(asc)"}
            response = self.request(
                "POST", "/v3/jobs/search", "search jobs", params=params, json={"search": conditions}
            )
            page = [TapisJob.model_validate(item) for item in response.json()["result"] or []]
            yield from page
            if len(page) < limit:
                return
            skip += limit

    def cancel_job(self, job_uuid: str) -> None:
        """`POST /v3/jobs/{jobUuid}/cancel`; a job already ended (409) is left alone.

        Example:
            ```python
            tapis.cancel_job("8a1c...-007")
            ```
        """
        self.request_unless(409, "POST", f"/v3/jobs/{quote(job_uuid, safe='')}/cancel", f"cancel job {job_uuid}")

    def job_history(self, job_uuid: str) -> list[JobHistoryEvent]:
        """`GET /v3/jobs/{jobUuid}/history`: every status change and event of the job.

        Example:
            ```python
            [event.event_detail for event in tapis.job_history("8a1c...-007")]  # ["PENDING", ..., "FINISHED"]
            ```
        """
        response = self.request(
            "GET",
            f"/v3/jobs/{quote(job_uuid, safe='')}/history",
            f"read the history of job {job_uuid}",
            params={"limit": 1000},
        )
        return [JobHistoryEvent.model_validate(item) for item in response.json()["result"] or []]

    def job_outputs(self, job_uuid: str, path: str) -> list[FileInfo]:
        """`GET /v3/jobs/{jobUuid}/output/list/{outputPath}` (a directory relative to the job's
        output directory, ending in `/`; allowed while the job runs).

        Example:
            ```python
            [file.name for file in tapis.job_outputs("8a1c...-007", "output/")]  # ["progress", "result.json"]
            ```
        """
        response = self.request(
            "GET",
            f"/v3/jobs/{quote(job_uuid, safe='')}/output/list/{quote(path.lstrip('/'), safe='/')}",
            f"list the outputs of job {job_uuid}",
            params={"allowIfRunning": "true", "limit": 1000},
        )
        return [FileInfo.model_validate(item) for item in response.json()["result"] or []]

    def job_output(self, job_uuid: str, path: str) -> bytes:
        """`GET /v3/jobs/{jobUuid}/output/download/{outputPath}`: one output file's bytes.

        Example:
            ```python
            json.loads(tapis.job_output("8a1c...-007", "output/result.json"))
            ```
        """
        response = self.request(
            "GET",
            f"/v3/jobs/{quote(job_uuid, safe='')}/output/download/{quoted_path(path)}",
            f"download {path} of job {job_uuid}",
            params={"allowIfRunning": "true"},
        )
        return response.content

    # --- Files ----------------------------------------------------------------------------

    def list_files(self, system_id: str, path: str, recurse: bool = False) -> list[FileInfo]:
        """`GET /v3/files/ops/{systemId}/{path}`; a missing path is an empty list.

        Example:
            ```python
            tapis.list_files("ls6", "/scratch/01234/jdoe/tacc/datasets", recurse=True)
            ```
        """
        response = self.request_unless(
            404,
            "GET",
            f"/v3/files/ops/{system_id}/{quoted_path(path)}",
            f"list {system_id}:{path}",
            params={"recurse": str(recurse).lower(), "limit": 10000},
        )
        return [FileInfo.model_validate(item) for item in response.json()["result"] or []] if response else []

    def get_contents(self, system_id: str, path: str) -> bytes | None:
        """`GET /v3/files/content/{systemId}/{path}`: a file's bytes, None when it does not exist.

        Example:
            ```python
            tapis.get_contents("ls6", "/scratch/01234/jdoe/tacc/jobs/6f1c.../output/progress")  # b"0.5000\\n"
            ```
        """
        response = self.request_unless(
            404, "GET", f"/v3/files/content/{system_id}/{quoted_path(path)}", f"read {system_id}:{path}"
        )
        return response.content if response is not None else None

    def upload(self, system_id: str, path: str, content: bytes) -> None:
        """`POST /v3/files/ops/{systemId}/{path}` (multipart): write one file, parents created.

        Example:
            ```python
            tapis.upload("ls6", "/scratch/01234/jdoe/tacc/apps/a.zip", archive_bytes)
            ```
        """
        self.request(
            "POST",
            f"/v3/files/ops/{system_id}/{quoted_path(path)}",
            f"upload {system_id}:{path}",
            files={"file": (posixpath.basename(path), content, "application/octet-stream")},
        )

    def mkdir(self, system_id: str, path: str) -> None:
        """`POST /v3/files/ops/{systemId}`: create a directory and its parents (no error if it exists).

        Example:
            ```python
            tapis.mkdir("ls6", "/scratch/01234/jdoe/tacc/datasets/VLASS2.1.eb123456")
            ```
        """
        self.request(
            "POST", f"/v3/files/ops/{system_id}", f"create {system_id}:{path}", json={"path": relative_path(path)}
        )

    def delete(self, system_id: str, path: str) -> None:
        """`DELETE /v3/files/ops/{systemId}/{path}` (recursive); a missing path is no error.

        Example:
            ```python
            tapis.delete("ls6", "/scratch/01234/jdoe/tacc/jobs/6f1c...")
            ```
        """
        self.request_unless(
            404, "DELETE", f"/v3/files/ops/{system_id}/{quoted_path(path)}", f"delete {system_id}:{path}"
        )

    def create_transfer(self, elements: list[TransferElement], tag: str) -> TransferTask:
        """`POST /v3/files/transfers`: Tapis moves the files itself, system to system (retried
        like any call: a transfer repeated after a lost answer copies the same files again).

        Example:
            ```python
            tapis.create_transfer([TransferElement(source_uri="tapis://corral/d/a.csv", destination_uri="tapis://ls6/scratch/d/a.csv")], "d")
            ```
        """
        body = {"tag": tag, "elements": [element.wire() for element in elements]}
        response = self.request("POST", "/v3/files/transfers", f"create transfer {tag}", json=body)
        return TransferTask.model_validate(response.json()["result"])

    def get_transfer(self, task_uuid: str) -> TransferTask:
        """`GET /v3/files/transfers/{transferTaskId}` with its byte counts.

        Example:
            ```python
            tapis.get_transfer(task.uuid).status  # "COMPLETED"
            ```
        """
        response = self.request(
            "GET",
            f"/v3/files/transfers/{quote(task_uuid, safe='')}",
            f"read transfer {task_uuid}",
            params={"includeSummary": "true"},
        )
        return TransferTask.model_validate(response.json()["result"])

    # --- Apps -----------------------------------------------------------------------------

    def get_app(self, app_id: str, version: str) -> Mapping[str, object] | None:
        """`GET /v3/apps/{appId}/{appVersion}`; None when no such app version exists.

        Example:
            ```python
            tapis.get_app("tacc-orch-alphacal", "1.0") is not None
            ```
        """
        response = self.request_unless(
            404, "GET", f"/v3/apps/{quote(app_id, safe='')}/{quote(version, safe='')}", f"read app {app_id} {version}"
        )
        return response.json()["result"] if response is not None else None

    def create_app(self, app: AppDefinition) -> None:
        """`POST /v3/apps`: register a new app version.

        Example:
            ```python
            tapis.create_app(app_definition("AlphaCal", "ls6", "/scratch/01234/jdoe/tacc"))
            ```
        """
        self.request("POST", "/v3/apps", f"create app {app.id} {app.version}", json=app.wire())

    def put_app(self, app: AppDefinition) -> None:
        """`PUT /v3/apps/{appId}/{appVersion}`: replace an existing app version's definition.

        Example:
            ```python
            tapis.put_app(app_definition("AlphaCal", "ls6", "/scratch/01234/jdoe/tacc"))
            ```
        """
        body = {key: value for key, value in app.wire().items() if key not in {"id", "version"}}
        self.request(
            "PUT",
            f"/v3/apps/{quote(app.id, safe='')}/{quote(app.version, safe='')}",
            f"update app {app.id} {app.version}",
            json=body,
        )
