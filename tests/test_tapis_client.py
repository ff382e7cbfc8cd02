"""The Tapis client against the Tapis test server: tokens, refresh, retries, errors, secrets."""

from __future__ import annotations

import logging
import time

import pytest
from pydantic import SecretStr

from blocks.tapis import TapisCredentials
from tacc_jobs.exceptions import (
    TapisRequestError,
    TapisUnavailableError,
    TransientError,
)
from tacc_jobs.tapis.client import TapisClient
from tacc_jobs.tapis.models import AppDefinition
from tests.tapis_server import CLIENT_ID, TapisTestServer, client_for

HOME = "/home/tacctest"
SEARCH = "POST /v3/jobs/search"


def test_token_is_refreshed_before_it_expires_mid_run(tapis_server: TapisTestServer) -> None:
    tapis_server.token_ttl = 3
    with client_for(
        tapis_server, client_id=CLIENT_ID, client_key=SecretStr(tapis_server.client_key), refresh_margin_seconds=2
    ) as client:
        first = client.access_token()
        client.list_files("ls6", HOME)
        time.sleep(1.2)  # now within the margin: the next call renews the token first
        client.list_files("ls6", HOME)
        assert client.access_token() != first
    assert tapis_server.token_grants == {"password": 1, "refresh_token": 1}
    assert not [answer for answer in tapis_server.answers if answer[1] == 401], "never sent an expired token"


def test_refresh_token_alone_with_client_credentials(tapis_server: TapisTestServer) -> None:
    with client_for(tapis_server, client_id=CLIENT_ID, client_key=SecretStr(tapis_server.client_key)) as client:
        client.access_token()
        refresh = client._refresh_token
    with TapisClient(
        tapis_server.base_url,
        tapis_server.username,
        refresh_token=refresh,
        client_id=CLIENT_ID,
        client_key=SecretStr(tapis_server.client_key),
    ) as client:
        assert client.list_files("ls6", HOME)
    assert tapis_server.token_grants["refresh_token"] >= 1


def test_a_401_after_expiry_renews_the_token_once(tapis_server: TapisTestServer, tapis_client: TapisClient) -> None:
    tapis_client.list_files("ls6", HOME)
    tapis_server.expire_tokens()  # the server says expired before the client thinks so
    assert tapis_client.list_files("ls6", HOME)
    assert tapis_server.answers[("GET /v3/files/ops/{systemId}/{path}", 401)] == 1
    assert tapis_server.token_grants["password"] == 2


def test_a_5xx_burst_is_retried_with_backoff(tapis_server: TapisTestServer, tapis_client: TapisClient) -> None:
    tapis_server.fail_next(SEARCH, 500, times=3)
    tapis_server.fail_next(SEARCH, 429)
    assert list(tapis_client.search_jobs(["(name = 'nobody')"])) == []
    assert tapis_server.calls[SEARCH] == 5
    tapis_server.fail_next(SEARCH, 503, times=10)
    with pytest.raises(TapisUnavailableError, match="HTTP 503") as raised:
        list(tapis_client.search_jobs(["(name = 'nobody')"]))
    assert isinstance(raised.value, TransientError), "tasks retry it"
    assert tapis_server.calls[SEARCH] == 5 + 1 + tapis_client.retries


def test_a_4xx_fails_at_once_with_the_apis_message(tapis_server: TapisTestServer, tapis_client: TapisClient) -> None:
    with pytest.raises(TapisRequestError, match="APPLIB_NOT_FOUND App not found: no-such-app 9") as raised:
        tapis_client.put_app(AppDefinition(id="no-such-app", version="9", description="x", container_image="/x.zip"))
    assert raised.value.status_code == 404 and not isinstance(raised.value, TransientError)
    assert tapis_server.calls["PUT /v3/apps/no-such-app/9"] == 1


def test_a_refused_login_says_so(tapis_server: TapisTestServer) -> None:
    with TapisClient(
        tapis_server.base_url, tapis_server.username, password=SecretStr("wrong"), backoff_seconds=0.01
    ) as client:
        with pytest.raises(TapisRequestError, match="get a token: HTTP 400: Invalid username/password combination"):
            client.list_files("ls6", HOME)
    assert tapis_server.calls["POST /v3/oauth2/tokens"] == 1
    assert tapis_server.undeclared == ["POST /v3/oauth2/tokens -> 400"], (
        "the Authenticator's spec declares only its 201"
    )


def test_secrets_never_reach_logs_or_errors(tapis_server: TapisTestServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    key = SecretStr(tapis_server.client_key)
    errors = []
    with client_for(tapis_server, client_id=CLIENT_ID, client_key=key, refresh_margin_seconds=0) as client:
        client.list_files("ls6", HOME)
        tapis_server.expire_tokens()
        tapis_server.fail_next("GET /v3/files/ops/{systemId}/{path}", 500, times=2)
        client.list_files("ls6", HOME)
        tapis_server.fail_next(SEARCH, 500, times=10)
        for call in (lambda: list(client.search_jobs(["(name = 'x')"])), lambda: client.get_app("missing", "1")):
            try:
                call()
            except Exception as error:  # noqa: BLE001 - collected to inspect their text
                errors.append(str(error))
        issued = [token for token in tapis_server.access_tokens] + list(tapis_server.refresh_tokens)
    block = TapisCredentials(
        username="jdoe",
        password=SecretStr(tapis_server.password),
        client_id=SecretStr(CLIENT_ID),
        client_key=key,
        exec_system_id="ls6",
        scratch_root="/scratch/jdoe",
    )
    text = "\n".join([caplog.text, *errors, repr(block), str(block), block.model_dump_json()])
    for secret in [tapis_server.password, tapis_server.client_key, *issued]:
        assert secret not in text
    assert "retrying" in caplog.text and errors


def test_the_block_needs_a_way_to_get_tokens() -> None:
    with pytest.raises(ValueError, match="give a password, or a refresh_token"):
        TapisCredentials(username="jdoe", exec_system_id="ls6", scratch_root="/scratch/jdoe")
    with pytest.raises(ValueError, match="refresh_token needs client_id and client_key"):
        TapisCredentials(
            username="jdoe", refresh_token=SecretStr("r"), exec_system_id="ls6", scratch_root="/scratch/jdoe"
        )
    assert (
        TapisCredentials(
            username="jdoe", password=SecretStr("p"), exec_system_id="ls6", scratch_root="/scratch/jdoe"
        ).base_url
        == "https://tacc.tapis.io"
    )


def test_every_block_field_is_described() -> None:
    assert all(
        field.description for field in TapisCredentials.model_fields.values() if field.alias != "block_type_slug"
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("username", "jdoe; rm -rf /"),
        ("exec_system_id", "ls6' OR '1'='1"),
        ("scratch_root", "relative/path"),
        ("scratch_root", "/scratch/../etc"),
        ("base_url", "file:///etc/passwd"),
        ("allocation", "A B"),
    ],
)
def test_block_fields_are_validated(field: str, value: str) -> None:
    fields = {
        "username": "jdoe",
        "password": SecretStr("p"),
        "exec_system_id": "ls6",
        "scratch_root": "/scratch/jdoe",
        field: value,
    }
    with pytest.raises(ValueError, match=field):
        TapisCredentials(**fields)
