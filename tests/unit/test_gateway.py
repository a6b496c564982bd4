"""The gateway's pure parts: request parsing and the mapping of errors to HTTP."""

from __future__ import annotations

import json

import pytest
from aiohttp.http_exceptions import BadStatusLine, LineTooLong, TransferEncodingError
from click.testing import CliRunner

from rpc import (
    BrokerError,
    CallTimeoutError,
    InvalidArgumentsError,
    MalformedRequestError,
    MethodNotFoundError,
    PayloadTooLargeError,
    RemoteError,
    SerializationError,
    UnknownServiceError,
    cli,
)
from rpc.gateway import create_app, error_response, parse_call_body, parse_timeout
from rpc.gateway_server import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    LIMITS,
    ConnectionLimits,
    content_encoding_accepted,
    parser_error,
    raw_error,
)


def nested(depth: int) -> bytes:
    """A JSON list of positional arguments ``depth`` levels deep: ``[[..."x"...]]``."""
    return b"[" * depth + b'"x"' + b"]" * depth


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"", ([], {})),
        (b"  \n", ([], {})),
        (b"null", ([], {})),
        (b'{"name": "x", "n": 2}', ([], {"name": "x", "n": 2})),
        (b'["x", 2, null]', (["x", 2, None], {})),
        (b"[]", ([], {})),
        ('{"név": "é"}'.encode(), ([], {"név": "é"})),
    ],
)
def test_parse_call_body_accepts_objects_lists_and_nothing(body, expected):
    assert parse_call_body(body) == expected


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"\xff", "not valid JSON"),
        (b"42", "must be a JSON object"),
        (b'"x"', "must be a JSON object"),
        (b"true", "must be a JSON object"),
    ],
)
def test_parse_call_body_refuses_other_json_clearly(body, message):
    with pytest.raises(SerializationError, match=message):
        parse_call_body(body)


def test_parse_timeout_prefers_the_header_to_the_query():
    assert parse_timeout(None, None) is None
    assert parse_timeout("2.5", None) == 2.5
    assert parse_timeout(None, "3") == 3.0
    assert parse_timeout("1", "9") == 1.0


@pytest.mark.parametrize("raw", ["abc", "", "0", "-1", "nan", "inf", "301"])
def test_parse_timeout_refuses_what_is_not_a_sane_duration(raw):
    with pytest.raises(ValueError, match="timeout must be"):
        parse_timeout(raw, None, limit=300)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (UnknownServiceError("no queue"), 404),
        (MethodNotFoundError("MethodNotFoundError", "no method"), 404),
        (InvalidArgumentsError("InvalidArgumentsError", "missing x"), 422),
        (MalformedRequestError("MalformedRequestError", "bad"), 400),
        (RemoteError("ValueError", "boom"), 502),
        (SerializationError("reply is not JSON"), 502),
        (PayloadTooLargeError("too big"), 413),
        (CallTimeoutError("late"), 504),
        (BrokerError("down"), 503),
        (RuntimeError("bug"), 500),
    ],
)
def test_error_response_status(exc, status):
    assert error_response(exc)[0] == status


def test_remote_errors_carry_type_message_and_service_but_no_traceback():
    exc = RemoteError("KeyError", "'k'", "Traceback...secret", service="inventory")
    assert error_response(exc) == (
        502,
        {"error": {"type": "KeyError", "message": "'k'", "service": "inventory"}},
    )


def test_internal_failures_do_not_leak_their_message():
    status, body = error_response(RuntimeError("password=hunter2"))
    assert status == 500
    assert "hunter2" not in str(body)
    assert body["error"]["type"] == "InternalError"


def test_arguments_nested_deeper_than_a_request_can_carry_are_refused():
    # A body orjson parses (it goes 1024 deep) but could not encode in a request
    # (254 levels, the envelope included): refused here, as the client's fault.
    with pytest.raises(SerializationError, match="nested too deep"):
        parse_call_body(nested(300))
    args, _ = parse_call_body(nested(250))
    assert len(args) == 1
    # Many brackets, none of them deep: only strings, or siblings.
    assert parse_call_body(json.dumps(["[" * 5000]).encode()) == (["[" * 5000], {})
    assert len(parse_call_body(b"[" + b",".join([b"[]"] * 5000) + b"]")[0]) == 5000


@pytest.mark.parametrize(
    ("values", "accepted"),
    [
        ([], True),
        (["identity"], True),
        (["gzip"], True),
        (["GZip"], True),
        (["deflate"], True),
        (["br"], False),
        (["zstd"], False),
        (["compress"], False),
        (["x-gzip"], False),
        (["gzip, gzip"], False),
        (["gzip", "identity"], False),
        ([""], False),
    ],
)
def test_content_encodings_are_a_short_closed_list(values, accepted):
    assert content_encoding_accepted(values) is accepted


@pytest.mark.parametrize(
    ("status", "exc", "expected"),
    [
        (400, BadStatusLine("GET", "Invalid method encountered:\n\n  b'GET'"), 400),
        (400, LineTooLong(b"a" * 500, 8190), 400),
        (400, TransferEncodingError("Invalid character in chunk size:\n  b'zz'"), 400),
        (500, RuntimeError("password=hunter2"), 500),
        (504, None, 504),
    ],
)
def test_parser_errors_keep_their_status_and_say_what_broke_briefly(
    status, exc, expected
):
    got_status, exc_type, message = parser_error(status, exc)
    assert got_status == expected
    if expected >= 500:
        assert exc_type == "InternalError"
        assert "hunter2" not in message
    else:
        assert exc_type == "MalformedRequestError"
        assert message.startswith("the request is not valid HTTP")
        assert "\n" not in message
        assert len(message) < 300


def test_raw_errors_are_whole_http_responses_with_the_documented_body():
    raw = raw_error(
        503, "TooManyConnectionsError", "full", headers={"Retry-After": "1"}
    )
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert "Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert "Connection: close" in lines
    assert "Retry-After: 1" in lines
    assert json.loads(body) == {
        "error": {"type": "TooManyConnectionsError", "message": "full"}
    }


@pytest.mark.parametrize(
    "limits",
    [
        {"header_timeout": 0},
        {"idle_timeout": -1},
        {"header_timeout": float("nan")},
        {"max_connections": 0},
    ],
)
def test_connection_limits_refuse_what_would_not_limit(limits):
    with pytest.raises(ValueError):
        ConnectionLimits(**limits)


def test_create_app_keeps_its_connection_limits():
    app = create_app(header_timeout=0.5, idle_timeout=2, max_connections=3)
    assert app[LIMITS] == ConnectionLimits(0.5, 2, 3)
    assert create_app()[LIMITS] == ConnectionLimits()


def test_the_command_line_defaults_are_the_gateways():
    # The CLI repeats them so as not to import aiohttp: they must not drift apart.
    params = {param.name: param for param in cli.gateway.params}
    assert params["header_timeout"].default == DEFAULT_HEADER_TIMEOUT
    assert params["idle_timeout"].default == DEFAULT_IDLE_TIMEOUT
    assert params["max_connections"].default == DEFAULT_MAX_CONNECTIONS
    for option in ("--header-timeout", "--idle-timeout", "--max-connections"):
        result = CliRunner().invoke(cli.main, ["gateway", option, "0"])
        assert result.exit_code == 2, option
        assert "Invalid value" in result.output
