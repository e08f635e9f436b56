"""Credentials in query strings never reach a log line, however the client spells or encodes them."""

from __future__ import annotations

import logging

import httpx
import pytest

from callstream.server.redact import RedactCredentials, is_credential, redact_query, redact_target

SECRET = "cs_s3cr3tvalue"


@pytest.mark.parametrize(
    "name",
    [
        "token", "Token", "TOKEN", "access_token", "id_token", "refresh-token", "key", "api_key", "API-Key",
        "apikey", "x_api_key", "code", "login", "secret", "client_secret", "password", "passwd", "jwt",
        "auth", "Authorization", "session", "signature",
    ],
)  # fmt: skip
def test_credential_names_are_recognised_in_any_case(name: str) -> None:
    assert is_credential(name)


@pytest.mark.parametrize("name", ["limit", "call_id", "since", "status", "cursor", "types", "q"])
def test_ordinary_parameters_are_not_credentials(name: str) -> None:
    assert not is_credential(name)


@pytest.mark.parametrize(
    "query",
    [
        f"token={SECRET}",
        f"Token={SECRET}",
        f"TOKEN={SECRET}",
        f"%74oken={SECRET}",  # the server decodes the name: this IS `token`
        f"%54%4F%4B%45%4E={SECRET}",
        f"limit=1&api_key={SECRET}",
        f"access_token={SECRET}&limit=1",
        f"code={SECRET}",
        f"login={SECRET}",
        f"password={SECRET}",
        f"jwt={SECRET}",
        f"authorization=Bearer+{SECRET}",
        f"token={SECRET}&token={SECRET}2",
        "token=%63%73_s3cr3tvalue",  # a percent-encoded value
    ],
)
def test_every_spelling_of_a_credential_is_redacted(query: str) -> None:
    redacted = redact_query(query)
    assert "s3cr3tvalue" not in redacted
    assert "[redacted]" in redacted


def test_other_parameters_survive_and_the_name_is_shown_decoded() -> None:
    assert redact_query(f"limit=5&%74oken={SECRET}&status=live") == "limit=5&token=[redacted]&status=live"


def test_a_query_without_credentials_is_left_exactly_as_it_was() -> None:
    assert (
        redact_query("call_id=a&call_id=b&types=transcript.final")
        == "call_id=a&call_id=b&types=transcript.final"
    )


def test_request_targets_and_urls_in_text_are_redacted() -> None:
    text = f'GET /v1/events?limit=1&TOKEN={SECRET} and http://h/x?api_key={SECRET} "HTTP/1.1 200 OK"'
    assert redact_target(text) == (
        'GET /v1/events?limit=1&TOKEN=[redacted] and http://h/x?api_key=[redacted] "HTTP/1.1 200 OK"'
    )
    assert redact_target("/v1/calls") == "/v1/calls"


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.error", logging.INFO, __file__, 1, msg, args, None)


def test_the_filter_redacts_uvicorn_access_and_websocket_lines() -> None:
    access = _record(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", f"/v1/calls?%74oken={SECRET}", "1.1", 200
    )
    socket = _record('%s - "WebSocket %s" [accepted]', "127.0.0.1:5", f"/v1/events?Token={SECRET}")
    for record in (access, socket):
        assert RedactCredentials().filter(record)
    assert access.getMessage() == '127.0.0.1:5 - "GET /v1/calls?token=[redacted] HTTP/1.1" 200'
    assert socket.getMessage() == '127.0.0.1:5 - "WebSocket /v1/events?Token=[redacted]" [accepted]'


def test_the_filter_redacts_url_objects_and_preformatted_messages() -> None:
    url = httpx.URL(f"https://hooks.example.com/in?key={SECRET}")
    logged = _record('HTTP Request: %s %s "%s %d %s"', "POST", url, "HTTP/1.1", 200, "OK")
    plain = _record(f"fetching /v1/events?password={SECRET}")
    for record in (logged, plain):
        RedactCredentials().filter(record)
        assert SECRET not in record.getMessage()
    assert (
        logged.getMessage()
        == 'HTTP Request: POST https://hooks.example.com/in?key=[redacted] "HTTP/1.1 200 OK"'
    )
