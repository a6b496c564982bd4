"""The JSON codec refuses what it must and keeps what it may."""

from __future__ import annotations

import pickle

import pytest

from rpc import serialization
from rpc.errors import PayloadTooLargeError, SerializationError


def test_round_trip():
    value = {"a": [1, 2.5, None, True], "b": "ü"}
    assert serialization.decode(serialization.encode(value)) == value


def test_pickle_is_never_accepted():
    body = pickle.dumps({"a": 1})
    with pytest.raises(SerializationError, match="not accepted"):
        serialization.decode(body, "application/x-python-serialize")


def test_missing_content_type_is_refused():
    with pytest.raises(SerializationError):
        serialization.decode(b"{}", None)


def test_invalid_json_is_a_serialization_error():
    with pytest.raises(SerializationError, match="not valid JSON"):
        serialization.decode(b"{nope")


def test_values_json_cannot_carry_are_refused():
    with pytest.raises(SerializationError, match="cannot encode"):
        serialization.encode({1, 2})


def test_size_limit():
    serialization.encode("x" * 100, limit=102)
    with pytest.raises(PayloadTooLargeError, match="over the limit"):
        serialization.encode("x" * 100, limit=101)


def test_error_payload_has_type_message_and_traceback():
    try:
        raise KeyError("missing")
    except KeyError as exc:
        payload = serialization.error_payload(exc)
    assert payload["type"] == "KeyError"
    assert payload["message"] == "'missing'"
    assert 'raise KeyError("missing")' in payload["traceback"]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=utf-8",
        "application/json;charset=UTF-8",
        "Application/JSON",
        'application/json; charset="utf-8"',
    ],
)
def test_json_with_parameters_is_accepted(content_type):
    assert serialization.decode(b'{"a": 1}', content_type) == {"a": 1}


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=latin-1", "text/json", "application/jsonx", "", None],
)
def test_other_content_types_and_charsets_are_refused(content_type):
    with pytest.raises(SerializationError, match="content type"):
        serialization.decode(b'{"a": 1}', content_type)


@pytest.mark.parametrize("encoding", ["utf-8", "UTF-8", "utf8", "", "identity"])
def test_plain_encodings_are_accepted(encoding):
    assert serialization.decode(b"[1]", "application/json", encoding) == [1]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "binary", "\udcff"])
def test_compressed_or_unknown_encodings_are_refused_by_name(encoding):
    with pytest.raises(SerializationError, match=r"content encoding .* not supported"):
        serialization.decode(b"[1]", "application/json", encoding)
