"""The JSON codec: the only content type accepted, and how remote errors are encoded."""

from __future__ import annotations

import traceback
from typing import Any

import orjson

from rpc.errors import PayloadTooLargeError, SerializationError

#: Any value that crosses the wire: whatever JSON can carry.
JsonValue = Any

CONTENT_TYPE = "application/json"
CONTENT_ENCODING = "utf-8"
#: Content types a consumer accepts. Pickle is never on this list.
ACCEPTED_CONTENT_TYPES = frozenset({CONTENT_TYPE})

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def encode(value: JsonValue, *, limit: int | None = None) -> bytes:
    """Encode a value as UTF-8 JSON bytes, refusing what JSON cannot carry."""
    try:
        body = orjson.dumps(value, option=_DUMPS_OPTIONS)
    except TypeError as exc:
        raise SerializationError(f"cannot encode as JSON: {exc}") from exc
    if limit is not None and len(body) > limit:
        raise PayloadTooLargeError(
            f"encoded payload is {len(body)} bytes, over the limit of {limit}"
        )
    return body


def decode(
    body: bytes | str,
    content_type: str | None = CONTENT_TYPE,
    content_encoding: str | None = None,
) -> JsonValue:
    """Decode a message body; anything but JSON is refused, never unpickled.

    ``application/json`` may carry parameters (``; charset=utf-8``), but no charset
    other than UTF-8. A ``content_encoding`` (when given) must say the body is plain
    UTF-8: a compressed body (``gzip``) is refused rather than read as garbage.
    """
    check_content_type(content_type)
    if (
        content_encoding is not None
        and content_encoding not in ACCEPTED_CONTENT_ENCODINGS
    ):
        check_content_encoding(content_encoding)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(f"body is not valid JSON: {exc}") from exc


def error_payload(exc: BaseException, *, with_traceback: bool = True) -> dict[str, str]:
    """The wire shape of a failure: type name, message and traceback text."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(exc)) if with_traceback else "",
    }


#: ``content_encoding`` values that mean "the body is UTF-8 text as it stands".
ACCEPTED_CONTENT_ENCODINGS = frozenset({"", "utf-8", "utf8", "identity"})


def check_content_type(content_type: str | None) -> None:
    """Raise SerializationError unless ``content_type`` is JSON in UTF-8."""
    if content_type in ACCEPTED_CONTENT_TYPES:
        return  # the common case, without parsing
    media, _, parameters = (content_type or "").partition(";")
    if media.strip().lower() not in ACCEPTED_CONTENT_TYPES:
        raise SerializationError(
            f"content type {content_type!r} is not accepted (only {CONTENT_TYPE})"
        )
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip().strip(
            '"'
        ).lower() not in (
            "utf-8",
            "utf8",
        ):
            raise SerializationError(
                f"content type {content_type!r}: only the utf-8 charset is accepted"
            )


def check_content_encoding(content_encoding: str) -> None:
    """Raise SerializationError unless the body is not compressed or transformed."""
    if content_encoding.strip().lower() not in ACCEPTED_CONTENT_ENCODINGS:
        raise SerializationError(
            f"content encoding {content_encoding!r} is not supported: send plain "
            f"UTF-8 JSON ({CONTENT_ENCODING})"
        )
