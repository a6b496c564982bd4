"""The gateway's pure parts: request parsing and the mapping of errors to HTTP."""

from __future__ import annotations

import pytest

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
)
from rpc.gateway import error_response, parse_call_body, parse_timeout


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
