"""A Tapis v3 test server: the endpoints the project uses, on 127.0.0.1, for the tests.

Every request and every response is validated against Tapis's own OpenAPI specifications (the
`openapi_v3-*.yml` files tapipy ships, vendored in `tests/tapis_specs/`) with openapi-core.
A request that does not conform is answered 400 and recorded in `violations`; so is a response
that does not conform (the tests fail on any). Two adaptations, both of the matcher, not of the
specifications: the server URL is this server's, and a multi-segment `{path}`/`{outputPath}`
(Tapis's Jersey routes take slashes in them; openapi-core's matcher stops at `/`) is
percent-encoded before matching. Answers whose status a specification does not declare (the
Authenticator's refusals, a gateway's 429/502) are recorded in `undeclared` instead.

Jobs run for real on the sandbox Slurm, as Tapis runs them: the app's ZIP archive is unpacked
into the job's directory, `tapisjob.sh` (the #SBATCH lines from the job, the environment, the
app's `tapisjob_app.sh`) is written over SSH as the sandbox user and `sbatch`ed; one monitor
thread follows every job with one `squeue` (and one `sacct` for those that left the queue).
Faults are injected on demand: 5xx/429 bursts, expired tokens, a BLOCKED job.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import json
import re
import secrets
import shlex
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote

import httpx
import uvicorn
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.responses.exceptions import ResponseNotFound
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tacc_jobs.ssh import SshConnection
from tacc_jobs.tapis.client import TapisClient

SPECS = Path(__file__).parent / "tapis_specs"
CLIENT_ID = "tacc-orchestrator-tests"
_MULTI_SEGMENT = re.compile(r"^(/v3/files/(?:ops|content)/[^/]+/|/v3/jobs/[^/]+/output/(?:list|download)/)(.+)$")
_CONDITION = re.compile(r"^\((\w+) (=|<|>=|IN) (.+)\)$")
_SAFE_OPTION = re.compile(r"^-{1,2}[A-Za-z][A-Za-z0-9-]*(?:[ =][A-Za-z0-9_.:+/-]+)?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SUBMIT_RETRIES = 15
TERMINAL = ("FINISHED", "CANCELLED", "FAILED")

# Stdin is base64 (binary-safe); paths are positional arguments, never pasted into the program.
WRITE_FILE = 'mkdir -p -- "$(dirname -- "$1")" && base64 -d > "$1"'
READ_FILE = '[ -f "$1" ] || exit 44; base64 -w0 -- "$1"'
LIST_FILES = (
    '[ -e "$1" ] || exit 44; if [ "$2" = true ]; then depth=20; else depth=1; fi; '
    '[ -d "$1" ] || depth=0; find "$1" -mindepth "$( [ -d "$1" ] && echo 1 || echo 0)" -maxdepth "$depth" -printf "%y\\t%s\\t%T@\\t%p\\n"'
)
UNZIP = 'mkdir -p -- "$2" && python3 -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$1" "$2"'


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def load_spec(name: str, server_url: str) -> OpenAPI:
    spec = yaml.safe_load((SPECS / f"openapi_v3-{name}.yml").read_text())
    spec["servers"] = [{"url": server_url}]
    # The files spec itself fails strict validation (a null default on a string enum): check calls, not the spec.
    return OpenAPI.from_dict(spec, config=Config(spec_validator_cls=None))


@dataclass
class ValidatedRequest:
    """A request as openapi-core reads it (its Request protocol)."""

    host_url: str
    path: str
    method: str
    parameters: RequestParameters
    content_type: str
    body: bytes | None


@dataclass
class ValidatedResponse:
    """A response as openapi-core reads it (its Response protocol)."""

    data: bytes
    status_code: int
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    status: int
    body: Any = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def data(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body).encode() if self.body is not None else b""


class TapisError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def basic(status: str, message: str, result: Any = None) -> dict[str, Any]:
    body = {"status": status, "message": message, "version": "1.8.0-test", "metadata": {}}
    return body if result is None else {**body, "result": result}


class TapisTestServer:
    """Tapis v3 for the tests, with its execution system `exec_system_id` being the sandbox."""

    def __init__(
        self,
        connection: SshConnection,
        exec_system_id: str,
        queues: set[str],
        username: str,
        password: str,
        client_id: str,
        client_key: str,
    ) -> None:
        self.ssh, self.exec_system_id, self.queues = connection, exec_system_id, queues
        self.username, self.password, self.client_id, self.client_key = username, password, client_id, client_key
        self.token_ttl = 3600.0
        self.access_tokens: dict[str, float] = {}
        self.refresh_tokens: set[str] = set()
        self.token_grants: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.violations: list[str] = []
        self.undeclared: list[str] = []
        self.faults: list[tuple[str, int]] = []
        self.lost_answers: list[tuple[str, int]] = []
        self.answers: Counter[tuple[str, int]] = Counter()
        self.jobs: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}
        self.apps: dict[tuple[str, str], dict[str, Any]] = {}
        self.blocked: set[str] = set()
        self.transfers: dict[str, dict[str, Any]] = {}
        self.ssh_slots = threading.BoundedSemaphore(6)
        self.lock = threading.RLock()
        self.stopping = threading.Event()
        self.specs: dict[str, OpenAPI] = {}
        self.base_url = ""
        self._server: uvicorn.Server | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> TapisTestServer:
        app = Starlette(routes=[Route("/{rest:path}", self.handle, methods=["GET", "POST", "PUT", "DELETE", "PATCH"])])
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
        )
        threading.Thread(target=self._server.run, daemon=True).start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("the Tapis test server did not start")
            time.sleep(0.02)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.specs = {
            "authenticator": load_spec("authenticator", self.base_url),
            "jobs": load_spec("jobs", f"{self.base_url}/v3"),
            "files": load_spec("files", self.base_url),
            "apps": load_spec("apps", self.base_url),
        }
        threading.Thread(target=self._monitor, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self._server is not None:
            self._server.should_exit = True

    # --- fault injection and inspection ---------------------------------------------------------

    def fail_next(self, route: str, status: int, times: int = 1) -> None:
        """Answer the next `times` calls of `route` (e.g. 'POST /v3/jobs/search') with `status`."""
        with self.lock:
            self.faults.extend([(route, status)] * times)

    def lose_next_answer(self, route: str, status: int = 502) -> None:
        """Serve the next call of `route`, then answer `status` (a gateway that lost the answer)."""
        with self.lock:
            self.lost_answers.append((route, status))

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (as after its expiry)."""
        with self.lock:
            self.access_tokens = {token: 0.0 for token in self.access_tokens}

    def block(self, job_uuid: str) -> None:
        """A recoverable fault reaching the job's system: the job goes BLOCKED until `unblock`."""
        self.blocked.add(job_uuid)

    def unblock(self, job_uuid: str) -> None:
        self.blocked.discard(job_uuid)

    def reset_counts(self) -> None:
        with self.lock:
            self.calls.clear()
            self.answers.clear()

    # --- HTTP ---------------------------------------------------------------------------------

    def _spec_for(self, path: str) -> OpenAPI:
        for prefix, name in (
            ("/v3/oauth2", "authenticator"),
            ("/v3/jobs", "jobs"),
            ("/v3/files", "files"),
            ("/v3/apps", "apps"),
        ):
            if path.startswith(prefix):
                return self.specs[name]
        raise TapisError(404, f"no Tapis service at {path}")

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        answer = await run_in_threadpool(self.serve, request, body)
        return Response(
            answer.data(), status_code=answer.status, media_type=answer.content_type, headers=answer.headers
        )

    def serve(self, request: Request, body: bytes) -> Answer:
        raw_path = request.url.path
        match = _MULTI_SEGMENT.match(raw_path)
        matched_path = f"{match.group(1)}{quote(match.group(2), safe='')}" if match else raw_path
        checked = ValidatedRequest(
            host_url=self.base_url,
            path=matched_path,
            method=request.method.lower(),
            parameters=RequestParameters(query=request.query_params, header=request.headers, cookie=request.cookies),
            content_type=request.headers.get("content-type", "application/json"),
            body=body or None,
        )
        route = f"{request.method} {self._route(raw_path)}"
        with self.lock:
            self.calls[route] += 1
        try:
            spec = self._spec_for(raw_path)
            result = spec.unmarshal_request(checked)
            if result.errors:
                details = "; ".join(
                    f"{type(error).__name__}: {getattr(error, '__cause__', None) or error}" for error in result.errors
                )
                self.violations.append(f"request {route}: {details}")
                raise TapisError(400, f"TAPIS_INVALID_REQUEST {details}")
            answer = self._injected(route) or self.dispatch(request.method, raw_path, request, body)
            lost = next((status for faulty, status in self.lost_answers if faulty == route), None)
            if lost is not None:
                self.lost_answers.remove((route, lost))
                answer = Answer(lost, basic("error", f"injected: HTTP {lost} (the answer was lost)"))
        except TapisError as error:
            answer = Answer(error.status, basic("error", error.message))
        with self.lock:
            self.answers[(route, answer.status)] += 1
        self._check_response(spec if raw_path.startswith("/v3/") else None, checked, answer, route)
        return answer

    def _route(self, path: str) -> str:
        path = re.sub(r"/v3/files/(ops|content)/([^/]+)/.*", r"/v3/files/\1/{systemId}/{path}", path)
        path = re.sub(r"/v3/jobs/[0-9a-f-]{36,}(/|$)", r"/v3/jobs/{jobUuid}\1", path)
        return re.sub(r"/output/(list|download)/.*", r"/output/\1/{outputPath}", path)

    def _injected(self, route: str) -> Answer | None:
        with self.lock:
            for index, (faulty, status) in enumerate(self.faults):
                if faulty == route:
                    del self.faults[index]
                    return Answer(status, basic("error", f"injected: HTTP {status} (server busy)"))
        return None

    def _check_response(self, spec: OpenAPI | None, request: ValidatedRequest, answer: Answer, route: str) -> None:
        if spec is None:
            return
        response = ValidatedResponse(
            data=answer.data(), status_code=answer.status, content_type=answer.content_type, headers=answer.headers
        )
        try:
            result = spec.unmarshal_response(request, response)
        except ResponseNotFound:
            self.undeclared.append(f"{route} -> {answer.status}")
            return
        if result.errors and isinstance(result.errors[0], ResponseNotFound):
            self.undeclared.append(f"{route} -> {answer.status}")
        elif result.errors:
            details = "; ".join(
                f"{type(error).__name__}: {getattr(error, '__cause__', None) or error}" for error in result.errors
            )
            self.violations.append(f"response {route} -> {answer.status}: {details}")

    def _user(self, request: Request) -> str:
        token = request.headers.get("x-tapis-token", "")
        with self.lock:
            expiry = self.access_tokens.get(token)
        if expiry is None:
            raise TapisError(401, "TAPIS_SECURITY_JWT_INVALID Invalid JWT: the token is not valid")
        if expiry <= time.time():
            raise TapisError(401, "TAPIS_SECURITY_JWT_EXPIRED The JWT has expired")
        return self.username

    def dispatch(self, method: str, path: str, request: Request, body: bytes) -> Answer:
        if (method, path) == ("POST", "/v3/oauth2/tokens"):
            return self.create_token(request, body)
        self._user(request)
        query = {key: values[-1] for key, values in parse_qs(request.url.query).items()}
        payload = (
            json.loads(body)
            if body and request.headers.get("content-type", "").startswith("application/json")
            else None
        )
        routes: list[tuple[str, str, Callable[..., Answer]]] = [
            ("POST", r"/v3/jobs/submit", lambda: self.submit(payload)),
            ("POST", r"/v3/jobs/search", lambda: self.search(payload, query)),
            ("POST", r"/v3/jobs/([^/]+)/cancel", self.cancel),
            ("GET", r"/v3/jobs/([^/]+)/history", self.job_history),
            ("GET", r"/v3/jobs/([^/]+)/output/list/(.*)", self.output_list),
            ("GET", r"/v3/jobs/([^/]+)/output/download/(.*)", self.output_download),
            (
                "GET",
                r"/v3/files/ops/([^/]+)/(.*)",
                lambda system, rel: self.list_files(system, rel, query.get("recurse") == "true"),
            ),
            ("POST", r"/v3/files/ops/([^/]+)/(.*)", lambda system, rel: self.upload(system, rel, request, body)),
            ("DELETE", r"/v3/files/ops/([^/]+)/(.*)", self.delete),
            ("POST", r"/v3/files/ops/([^/]+)", lambda system: self.mkdir(system, payload)),
            ("GET", r"/v3/files/content/([^/]+)/(.*)", self.contents),
            ("POST", r"/v3/files/transfers", lambda: self.create_transfer(payload)),
            ("GET", r"/v3/files/transfers/([^/]+)", self.get_transfer),
            ("POST", r"/v3/apps", lambda: self.create_app(payload)),
            ("GET", r"/v3/apps/([^/]+)/([^/]+)", self.get_app),
            ("PUT", r"/v3/apps/([^/]+)/([^/]+)", lambda app_id, version: self.put_app(app_id, version, payload)),
        ]
        for verb, pattern, handler in routes:
            found = re.fullmatch(pattern, path)
            if verb == method and found:
                return handler(*(unquote(group) for group in found.groups()))
        raise TapisError(404, f"TAPIS_NOT_FOUND {method} {path}")

    # --- Authenticator ------------------------------------------------------------------------

    def create_token(self, request: Request, body: bytes) -> Answer:
        content_type = request.headers.get("content-type", "")
        form = (
            json.loads(body)
            if content_type.startswith("application/json")
            else {k: v[-1] for k, v in parse_qs(body.decode()).items()}
        )
        client = None
        if request.headers.get("authorization", "").startswith("Basic "):
            client = tuple(base64.b64decode(request.headers["authorization"][6:]).decode().split(":", 1))
        if client is not None and client != (self.client_id, self.client_key):
            raise TapisError(401, "Invalid client credentials.")
        grant = form.get("grant_type")
        if grant == "password":
            if (form.get("username"), form.get("password")) != (self.username, self.password):
                raise TapisError(400, "Invalid username/password combination.")
        elif grant == "refresh_token":
            if client is None:
                raise TapisError(400, "Client credentials are required for the refresh_token grant.")
            if form.get("refresh_token") not in self.refresh_tokens:
                raise TapisError(400, "Invalid refresh token.")
            self.refresh_tokens.discard(form["refresh_token"])
        else:
            raise TapisError(400, f"Invalid grant_type: {grant}")
        access, refresh = f"eyJ.{secrets.token_urlsafe(24)}", f"eyJ.{secrets.token_urlsafe(24)}"
        with self.lock:
            self.access_tokens[access] = time.time() + self.token_ttl
            self.refresh_tokens.add(refresh)
            self.token_grants[grant] += 1
        expires = datetime.fromtimestamp(time.time() + self.token_ttl, timezone.utc).isoformat()
        return Answer(
            201,
            basic(
                "success",
                "Token created successfully.",
                {
                    "access_token": {
                        "access_token": access,
                        "expires_at": expires,
                        "expires_in": int(self.token_ttl),
                        "jti": str(uuid.uuid4()),
                    },
                    "refresh_token": {
                        "refresh_token": refresh,
                        "expires_at": expires,
                        "expires_in": 14400,
                        "jti": str(uuid.uuid4()),
                    },
                },
            ),
        )

    # --- SSH on the execution system ----------------------------------------------------------

    def _ssh(self, argv: list[str], stdin: str | None = None) -> tuple[int, str, str]:
        with self.ssh_slots:
            completed = self.ssh.run(argv, stdin=stdin, timeout=60)
        return completed.returncode, completed.stdout, completed.stderr

    def _system_path(self, system: str, rel: str) -> str:
        if system != self.exec_system_id:
            raise TapisError(404, f"SYSLIB_NOT_FOUND System not found: {system}")
        if ".." in rel.split("/"):
            raise TapisError(400, "FILES_INVALID_PATH '..' is not allowed")
        return "/" + rel.strip("/")

    # --- Files --------------------------------------------------------------------------------

    def list_files(self, system: str, rel: str, recurse: bool) -> Answer:
        code, out, err = self._ssh(
            ["bash", "-c", LIST_FILES, "list", self._system_path(system, rel), str(recurse).lower()]
        )
        if code == 44:
            raise TapisError(404, f"FILES_NOT_FOUND {rel}")
        if code:
            raise TapisError(500, f"FILES_LIST_ERROR {err.strip()}")
        items = []
        for line in out.splitlines():
            kind, size, mtime, path = line.split("\t", 3)
            items.append(
                {
                    "type": "dir" if kind == "d" else "file",
                    "size": int(size),
                    "name": path.rsplit("/", 1)[-1],
                    "path": path.lstrip("/"),
                    "lastModified": datetime.fromtimestamp(float(mtime), timezone.utc).isoformat(),
                    "mimeType": "application/octet-stream",
                    "nativePermissions": "rw-r--r--",
                    "url": f"tapis://{system}{path}",
                }
            )
        return Answer(200, basic("success", "ok", items))

    def contents(self, system: str, rel: str) -> Answer:
        code, out, err = self._ssh(["bash", "-c", READ_FILE, "read", self._system_path(system, rel)])
        if code == 44:
            raise TapisError(404, f"FILES_NOT_FOUND {rel}")
        if code:
            raise TapisError(500, f"FILES_READ_ERROR {err.strip()}")
        return Answer(200, base64.b64decode(out), content_type="application/octet-stream")

    def upload(self, system: str, rel: str, request: Request, body: bytes) -> Answer:
        message = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + body
        )
        parts = [
            part for part in message.iter_parts() if part.get_param("name", header="content-disposition") == "file"
        ]
        if not parts:
            raise TapisError(400, "FILES_UPLOAD_ERROR no 'file' part")
        content = parts[0].get_payload(decode=True) or b""
        code, _, err = self._ssh(
            ["bash", "-c", WRITE_FILE, "write", self._system_path(system, rel)],
            stdin=base64.b64encode(content).decode(),
        )
        if code:
            raise TapisError(500, f"FILES_UPLOAD_ERROR {err.strip()}")
        return Answer(200, basic("success", "File uploaded", "ok"))

    def mkdir(self, system: str, payload: dict[str, Any]) -> Answer:
        code, _, err = self._ssh(["mkdir", "-p", "--", self._system_path(system, payload["path"])])
        if code:
            raise TapisError(500, f"FILES_MKDIR_ERROR {err.strip()}")
        return Answer(200, basic("success", "Directory created", "ok"))

    def delete(self, system: str, rel: str) -> Answer:
        path = self._system_path(system, rel)
        code, _, _ = self._ssh(["test", "-e", path])
        if code:
            raise TapisError(404, f"FILES_NOT_FOUND {rel}")
        self._ssh(["rm", "-rf", "--", path])
        return Answer(200, basic("success", "Deleted", "ok"))

    def create_transfer(self, payload: dict[str, Any]) -> Answer:
        pairs = []
        for element in payload["elements"]:
            found = [re.fullmatch(r"tapis://([^/]+)/(.+)", element[key]) for key in ("sourceURI", "destinationURI")]
            if not all(found):
                raise TapisError(400, f"FILES_TXFR_INVALID_URI {element}")
            pairs.append(tuple(self._system_path(match.group(1), match.group(2)) for match in found if match))
        task = {
            "uuid": str(uuid.uuid4()),
            "tag": payload.get("tag", ""),
            "status": "ACCEPTED",
            "username": self.username,
            "tenantId": "tacc",
            "created": now(),
            "totalTransfers": len(pairs),
            "completeTransfers": 0,
            "estimatedTotalBytes": 0,
            "totalBytesTransferred": 0,
        }
        self.transfers[task["uuid"]] = task
        threading.Thread(target=self._run_transfer, args=(task, pairs), daemon=True).start()
        return Answer(200, basic("success", "Transfer created", dict(task)))

    def _run_transfer(self, task: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
        task.update(status="IN_PROGRESS", startTime=now())
        for source, destination in pairs:
            code, out, err = self._ssh(
                [
                    "bash",
                    "-c",
                    'mkdir -p -- "$(dirname -- "$2")" && cp -- "$1" "$2" && stat -c %s -- "$2"',
                    "transfer",
                    source,
                    destination,
                ]
            )
            if code:
                task.update(status="FAILED", errorMessage=err.strip(), endTime=now())
                return
            task["totalBytesTransferred"] += int(out)
            task["estimatedTotalBytes"] = task["totalBytesTransferred"]
            task["completeTransfers"] += 1
        task.update(status="COMPLETED", endTime=now())

    def get_transfer(self, task_uuid: str) -> Answer:
        task = self.transfers.get(task_uuid)
        if task is None:
            raise TapisError(404, f"FILES_TXFR_NOT_FOUND {task_uuid}")
        return Answer(200, basic("success", "Transfer", dict(task)))

    # --- Apps ---------------------------------------------------------------------------------

    def create_app(self, payload: dict[str, Any]) -> Answer:
        key = (payload["id"], payload["version"])
        with self.lock:
            if key in self.apps:
                raise TapisError(409, f"APPLIB_APP_EXISTS App already exists: {key[0]} {key[1]}")
            self.apps[key] = {**payload, "owner": self.username, "enabled": True, "created": now(), "updated": now()}
        return Answer(201, basic("success", "App created", {"url": f"{self.base_url}/v3/apps/{key[0]}/{key[1]}"}))

    def get_app(self, app_id: str, version: str) -> Answer:
        app = self.apps.get((app_id, version))
        if app is None:
            raise TapisError(404, f"APPLIB_NOT_FOUND App not found: {app_id} {version}")
        return Answer(200, basic("success", "App retrieved", app))

    def put_app(self, app_id: str, version: str, payload: dict[str, Any]) -> Answer:
        with self.lock:
            if (app_id, version) not in self.apps:
                raise TapisError(404, f"APPLIB_NOT_FOUND App not found: {app_id} {version}")
            self.apps[(app_id, version)].update({**payload, "updated": now()})
        return Answer(200, basic("success", "App updated", {"url": f"{self.base_url}/v3/apps/{app_id}/{version}"}))

    # --- Jobs ---------------------------------------------------------------------------------

    def submit(self, request: dict[str, Any]) -> Answer:
        app = self.apps.get((request["appId"], request["appVersion"]))
        if app is None:
            raise TapisError(
                400,
                f"JOBS_APP_NOT_FOUND Application {request['appId']} version {request['appVersion']} was not "
                f"found or is not available to user {self.username}",
            )
        if request.get("execSystemId") != self.exec_system_id:
            raise TapisError(
                400, f"JOBS_INVALID_EXEC_SYSTEM execution system {request.get('execSystemId')!r} not found"
            )
        queue = request.get("execSystemLogicalQueue")
        if queue not in self.queues:
            raise TapisError(
                400, f"JOBS_QUEUE_NOT_FOUND logical queue {queue!r} is not defined on {self.exec_system_id}"
            )
        parameters = request.get("parameterSet", {})
        for option in parameters.get("schedulerOptions", []):
            if not _SAFE_OPTION.fullmatch(option["arg"]):
                raise TapisError(400, f"JOBS_INVALID_SCHEDULER_OPTION {option['arg']!r}")
        for variable in parameters.get("envVariables", []):
            if not _ENV_KEY.fullmatch(variable["key"]) or variable["key"].startswith("_tapis"):
                raise TapisError(400, f"JOBS_INVALID_ENV_VARIABLE {variable['key']!r}")
        job_uuid = f"{uuid.uuid4()}-007"
        job = {
            "uuid": job_uuid,
            "id": len(self.jobs) + 1,
            "name": request["name"],
            "owner": self.username,
            "tenant": "tacc",
            "description": request.get("description", ""),
            "status": "PENDING",
            "created": now(),
            "lastUpdated": now(),
            "appId": request["appId"],
            "appVersion": request["appVersion"],
            "execSystemId": self.exec_system_id,
            "execSystemExecDir": request["execSystemExecDir"],
            "execSystemInputDir": request["execSystemInputDir"],
            "execSystemOutputDir": request["execSystemOutputDir"],
            "execSystemLogicalQueue": queue,
            "archiveSystemId": request.get("archiveSystemId", self.exec_system_id),
            "archiveSystemDir": request.get("archiveSystemDir", ""),
            "nodeCount": request.get("nodeCount", 1),
            "coresPerNode": 1,
            "maxMinutes": request.get("maxMinutes", 10),
            "fileInputs": json.dumps(request.get("fileInputs", [])),
            "parameterSet": json.dumps(parameters),
            "subscriptions": json.dumps(request.get("subscriptions", [])),
            "tags": request.get("tags", []),
            "blockedCount": 0,
            "remoteSubmitRetries": 0,
            "remoteChecksSuccess": 0,
            "remoteChecksFailed": 0,
            "visible": True,
            "createdby": self.username,
            "createdbyTenant": "tacc",
            "jobType": "BATCH",
            "mpi": False,
            "lastMessage": "Job created",
            "_containerImage": app["containerImage"],
        }
        with self.lock:
            self.jobs[job_uuid] = job
            self.history[job_uuid] = []
        self._event(job, "JOB_NEW_STATUS", "PENDING", "The job was created")
        threading.Thread(target=self._launch, args=(job_uuid,), daemon=True).start()
        return Answer(200, basic("success", "Job submitted", self._public(job)))

    def _public(self, job: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in job.items() if not key.startswith("_")}

    def _event(self, job: dict[str, Any], event: str, status: str, message: str) -> None:
        with self.lock:
            job.update(status=status, lastMessage=message, lastUpdated=now())
            if status in TERMINAL:
                job["ended"] = now()
            self.history[job["uuid"]].append(
                {"event": event, "created": now(), "eventDetail": status, "description": message}
            )
        for subscription in json.loads(job["subscriptions"]):
            if subscription.get("eventCategoryFilter") in ("JOB_NEW_STATUS", "ALL") and subscription.get(
                "enabled", True
            ):
                for target in subscription.get("deliveryTargets", []):
                    self._deliver(target["deliveryAddress"], job, status, message)

    def _deliver(self, address: str, job: dict[str, Any], status: str, message: str) -> None:
        notification = {
            "uuid": str(uuid.uuid4()),
            "tenant": "tacc",
            "subscriptionName": f"{job['uuid']}-sub",
            "created": now(),
            "event": {
                "source": f"{self.base_url}/jobs",
                "type": f"jobs.JOB_NEW_STATUS.{status}",
                "subject": job["uuid"],
                "timestamp": now(),
                "data": json.dumps(
                    {"newJobStatus": status, "jobName": job["name"], "jobUuid": job["uuid"], "message": message}
                ),
            },
        }
        try:
            httpx.post(address, json=notification, timeout=5)
        except httpx.HTTPError as error:  # Tapis's notifications service logs failed deliveries and goes on
            self.undeclared.append(f"delivery to {address}: {error}")

    def _launch(self, job_uuid: str) -> None:
        job = self.jobs[job_uuid]
        try:
            for step, message in (("PROCESSING_INPUTS", "Processing inputs"), ("STAGING_INPUTS", "Staging inputs")):
                if job["status"] == "CANCELLED":
                    return
                self._event(job, "JOB_NEW_STATUS", step, message)
            for item in json.loads(job["fileInputs"]):
                source = re.fullmatch(r"tapis://([^/]+)(/.*)", item["sourceUrl"])
                if source is None or source.group(1) != self.exec_system_id:
                    raise TapisError(400, f"JOBS_INPUT_UNREACHABLE {item['sourceUrl']}")
                target = f"{job['execSystemInputDir']}/{item['targetPath']}"
                code, _, err = self._ssh(
                    [
                        "bash",
                        "-c",
                        'mkdir -p -- "$(dirname -- "$2")" && cp -r -- "$1" "$2"',
                        "cp",
                        source.group(2),
                        target,
                    ]
                )
                if code:
                    raise TapisError(500, f"JOBS_UNABLE_TO_STAGE_INPUTS {err.strip()}")
            self._event(job, "JOB_NEW_STATUS", "STAGING_JOB", "Staging the application")
            code, _, err = self._ssh(["bash", "-c", UNZIP, "unzip", job["_containerImage"], job["execSystemExecDir"]])
            if code:
                raise TapisError(500, f"JOBS_UNABLE_TO_STAGE_JOB {err.strip()}")
            self._write(job["execSystemExecDir"] + "/tapisjob.sh", self._script(job))
            self._write(job["execSystemExecDir"] + "/tapisjob.env", self._environment(job))
            if job["status"] == "CANCELLED":
                return
            self._event(job, "JOB_NEW_STATUS", "SUBMITTING_JOB", "Submitting the job to Slurm")
            for retry in range(
                SUBMIT_RETRIES + 1
            ):  # as Tapis does (remoteSubmitRetries): a controller restarting is no failure
                code, out, err = self._ssh(
                    ["bash", "-c", 'cd -- "$1" && sbatch --parsable tapisjob.sh', "sbatch", job["execSystemExecDir"]]
                )
                if code == 0 or retry == SUBMIT_RETRIES:
                    break
                job["remoteSubmitRetries"] += 1
                time.sleep(2)
            if code:
                raise TapisError(500, f"JOBS_LAUNCH_FAILURE sbatch: {err.strip()}")
            with self.lock:
                job.update(
                    remoteJobId=out.strip().split(";")[0],
                    remoteSubmitted=now(),
                    remoteQueue=job["execSystemLogicalQueue"],
                )
            self._event(job, "JOB_NEW_STATUS", "QUEUED", f"Slurm job {job['remoteJobId']} queued")
        except TapisError as error:
            job["condition"] = "JOB_UNABLE_TO_STAGE_JOB" if "STAGE_JOB" in error.message else "JOB_LAUNCH_FAILURE"
            self._event(job, "JOB_NEW_STATUS", "FAILED", error.message)

    def _write(self, path: str, text: str) -> None:
        code, _, err = self._ssh(
            ["bash", "-c", WRITE_FILE, "write", path], stdin=base64.b64encode(text.encode()).decode()
        )
        if code:
            raise TapisError(500, f"JOBS_UNABLE_TO_STAGE_JOB {err.strip()}")

    def _script(self, job: dict[str, Any]) -> str:
        parameters = json.loads(job["parameterSet"])
        logs = parameters.get("logConfig") or {"stdoutFilename": "tapisjob.out", "stderrFilename": "tapisjob.err"}
        output = job["execSystemOutputDir"]
        directives = [
            f"--job-name {job['name']}",
            f"--partition {job['execSystemLogicalQueue']}",
            f"--nodes {job['nodeCount']}",
            f"--time {job['maxMinutes']}",
            f"--output {output}/{logs['stdoutFilename']}",
            f"--error {output}/{logs['stderrFilename']}",
            *(option["arg"] for option in parameters.get("schedulerOptions", [])),
        ]
        return "\n".join(
            [
                "#!/bin/bash",
                *(f"#SBATCH {directive}" for directive in directives),
                f"cd {shlex.quote(job['execSystemExecDir'])}",
                "set -a; . ./tapisjob.env; set +a",
                "bash ./tapisjob_app.sh",
                "",
            ]
        )

    def _environment(self, job: dict[str, Any]) -> str:
        variables = {item["key"]: item["value"] for item in json.loads(job["parameterSet"]).get("envVariables", [])}
        variables.update(_tapisJobUUID=job["uuid"], _tapisExecSystemExecDir=job["execSystemExecDir"])
        return "".join(f"{key}={shlex.quote(value)}\n" for key, value in variables.items())

    def _monitor(self) -> None:
        """One squeue (and one sacct) for every job in Slurm, as often as the tests need."""
        while not self.stopping.is_set():
            time.sleep(0.3)
            with self.lock:
                watched = {
                    job["remoteJobId"]: job
                    for job in self.jobs.values()
                    if job.get("remoteJobId") and job["status"] in ("QUEUED", "RUNNING", "BLOCKED")
                }
            for job in list(watched.values()):
                if job["uuid"] in self.blocked and job["status"] != "BLOCKED":
                    job["_before_block"] = job["status"]
                    job["blockedCount"] += 1
                    self._event(
                        job,
                        "JOB_NEW_STATUS",
                        "BLOCKED",
                        "Remote access error: SSH connection to the system lost; retrying",
                    )
                elif job["status"] == "BLOCKED" and job["uuid"] not in self.blocked:
                    self._event(
                        job, "JOB_NEW_STATUS", job.pop("_before_block"), "Connection recovered; monitoring resumed"
                    )
            active = {remote: job for remote, job in watched.items() if job["status"] != "BLOCKED"}
            if not active:
                continue
            try:
                self._observe(active)
            except Exception as error:  # a daemon restarted by another test: try again next round
                self.undeclared.append(f"monitor: {type(error).__name__}: {error}")

    def _observe(self, active: dict[str, dict[str, Any]]) -> None:
        """squeue first (it keeps ended jobs a few minutes, and needs no slurmdbd); sacct for the
        exit code of a failure, or for jobs squeue no longer knows."""
        code, out, _ = self._ssh(
            [
                "env",
                "TZ=UTC",
                "squeue",
                "--noheader",
                "--states=all",
                f"--jobs={','.join(active)}",
                "--format=%i|%T|%S|%e",
            ]
        )
        in_queue = {line.split("|")[0]: line.split("|")[1:] for line in out.split()} if code == 0 else {}
        for remote, (state, start, end) in in_queue.items():
            job = active.get(remote)
            if job and state in ("RUNNING", "COMPLETING") and job["status"] == "QUEUED":
                job["remoteStarted"] = f"{start}.000000Z"
                self._event(job, "JOB_NEW_STATUS", "RUNNING", f"Slurm job {remote} is running")
            elif job and state in ("COMPLETED", "CANCELLED"):
                self._finish(job, state, "0:0", start, end)
        left = [
            remote
            for remote in active
            if in_queue.get(remote, [""])[0]
            not in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "COMPLETED", "CANCELLED")
        ]
        if not left:
            return
        code, out, _ = self._ssh(
            [
                "env",
                "TZ=UTC",
                "sacct",
                "--noheader",
                "-X",
                "--parsable2",
                f"--jobs={','.join(left)}",
                "--format=JobID,State,ExitCode,Start,End",
            ]
        )
        for line in out.splitlines() if code == 0 else []:
            remote, state, exit_code, start, end = line.split("|")
            job = active.get(remote)
            if job is None or state.split()[0] in ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING"):
                continue
            self._finish(job, state.split()[0], exit_code, start, end)

    def _finish(self, job: dict[str, Any], state: str, exit_code: str, start: str, end: str) -> None:
        """Slurm's own start and end times, as Tapis reports them."""
        started = f"{start}.000000Z" if start[:1].isdigit() else job.get("remoteStarted") or now()
        with self.lock:
            job.update(
                remoteEnded=f"{end}.000000Z" if end[:1].isdigit() else now(),
                remoteResultInfo=exit_code,
                remoteStarted=started,
            )
        if state == "CANCELLED":
            job.setdefault("condition", "SCHEDULER_CANCELLED")
            self._event(job, "JOB_NEW_STATUS", "CANCELLED", f"Slurm job cancelled ({exit_code})")
            return
        self._event(job, "JOB_NEW_STATUS", "ARCHIVING", "Archiving the outputs (in place)")
        if state == "COMPLETED":
            job.update(condition="NORMAL_COMPLETION", remoteOutcome="FINISHED")
            self._event(job, "JOB_NEW_STATUS", "FINISHED", "The job completed")
            return
        conditions = {
            "TIMEOUT": "SCHEDULER_TIMEOUT",
            "OUT_OF_MEMORY": "SCHEDULER_OUT_OF_MEMORY",
            "DEADLINE": "SCHEDULER_DEADLINE",
        }
        job.update(condition=conditions.get(state, "JOB_REMOTE_OUTCOME_ERROR"), remoteOutcome="FAILED")
        self._event(job, "JOB_NEW_STATUS", "FAILED", f"Slurm reported {state}, exit code {exit_code}")

    def search(self, payload: dict[str, Any], query: dict[str, str]) -> Answer:
        conditions = [part for part in payload.get("search", []) if part.strip().upper() != "AND"]
        matches = list(self.jobs.values())
        for condition in conditions:
            found = _CONDITION.fullmatch(condition.strip())
            if found is None:
                raise TapisError(400, f"JOBS_SEARCH_INVALID condition {condition!r}")
            name, operator, literal = found.groups()
            values = re.findall(r"'([^']*)'", literal)
            if not values:
                raise TapisError(400, f"JOBS_SEARCH_INVALID value in {condition!r}")
            matches = [job for job in matches if self._matches(job.get(name), operator, values)]
        skip, limit = int(query.get("skip", 0)), int(query.get("limit", 100))
        return Answer(200, basic("success", "Jobs found", [self._public(job) for job in matches[skip : skip + limit]]))

    @staticmethod
    def _matches(value: Any, operator: str, values: list[str]) -> bool:
        if operator == "IN":
            return value in values
        if operator == "=":
            return value == values[0]
        if value is None:
            return False
        return value < values[0] if operator == "<" else value >= values[0]

    def cancel(self, job_uuid: str) -> Answer:
        job = self.jobs.get(job_uuid)
        if job is None:
            raise TapisError(404, f"JOBS_NOT_FOUND {job_uuid}")
        if job["status"] in TERMINAL:
            raise TapisError(409, f"JOBS_ALREADY_TERMINAL job {job_uuid} is {job['status']}")
        job["condition"] = "CANCELLED_BY_USER"
        if job.get("remoteJobId"):
            self._ssh(["scancel", job["remoteJobId"]])
        self._event(job, "JOB_NEW_STATUS", "CANCELLED", "Cancelled by the user")
        return Answer(200, basic("success", "Job cancellation initiated", {"message": f"Job {job_uuid} cancelled"}))

    def job_history(self, job_uuid: str) -> Answer:
        if job_uuid not in self.jobs:
            raise TapisError(404, f"JOBS_NOT_FOUND {job_uuid}")
        return Answer(200, basic("success", "History", list(self.history[job_uuid])))

    def output_list(self, job_uuid: str, rel: str) -> Answer:
        job = self.jobs.get(job_uuid)
        if job is None:
            raise TapisError(404, f"JOBS_NOT_FOUND {job_uuid}")
        return self.list_files(self.exec_system_id, f"{job['execSystemOutputDir'].strip('/')}/{rel}", recurse=False)

    def output_download(self, job_uuid: str, rel: str) -> Answer:
        job = self.jobs.get(job_uuid)
        if job is None:
            raise TapisError(404, f"JOBS_NOT_FOUND {job_uuid}")
        return self.contents(self.exec_system_id, f"{job['execSystemOutputDir'].strip('/')}/{rel}")


def client_for(server: TapisTestServer, **options: Any) -> TapisClient:
    """A client of the test server as its user (password grant), retrying fast."""
    return TapisClient(
        server.base_url, server.username, **{"password": SecretStr(server.password), "backoff_seconds": 0.01, **options}
    )
