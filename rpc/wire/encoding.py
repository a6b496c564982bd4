"""Packing the publish and ack frames of a call directly.

py-amqp builds every outgoing frame through a table of method signatures and all
fourteen message properties. The few frames a call sends are packed here instead.
Anything unusual (a property or header value outside the few types written here)
returns None, and the caller goes through py-amqp as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rpc.wire.frames import (
    ACK,
    ACK_FRAME,
    BASIC,
    BODY_FRAME,
    CONTENT_HEADER,
    DOUBLE,
    END,
    FRAME_END,
    FRAME_HEADER,
    FRAME_OVERHEAD,
    HEADER_FRAME,
    INT32,
    MANDATORY,
    METHOD_FRAME,
    NOT_MANDATORY,
    PROPERTY_SPEC,
    PUBLISH,
    PUBLISH_START,
    UINT32,
    keep,
)


def ack_frame(channel: int, delivery_tag: int) -> bytes:
    """basic.ack of one delivery."""
    return ACK_FRAME.pack(
        METHOD_FRAME, channel, 13, BASIC, ACK, delivery_tag, 0, FRAME_END
    )


def publish_frames(
    channel: int,
    frame_max: int,
    exchange: str,
    routing_key: str,
    mandatory: bool,
    body: bytes,
    properties: Mapping[str, Any],
) -> bytes | None:
    """basic.publish, its content header and body frames, as one string of bytes.

    None when a property or header is of a kind not written here; py-amqp then
    writes the message.
    """
    encoded = _properties(properties)
    if encoded is None:
        return None
    flags, props = encoded
    exchange_bytes = _shortstr(exchange)
    key_bytes = _shortstr(routing_key)
    if exchange_bytes is None or key_bytes is None:
        return None
    method_size = 7 + len(exchange_bytes) + len(key_bytes)
    parts = [
        PUBLISH_START.pack(METHOD_FRAME, channel, method_size, BASIC, PUBLISH, 0),
        exchange_bytes,
        key_bytes,
        MANDATORY if mandatory else NOT_MANDATORY,
        CONTENT_HEADER.pack(
            HEADER_FRAME, channel, 14 + len(props), BASIC, 0, len(body), flags
        ),
        props,
        END,
    ]
    chunk = frame_max - FRAME_OVERHEAD
    for offset in range(0, len(body), chunk):
        piece = body[offset : offset + chunk]
        parts += (FRAME_HEADER.pack(BODY_FRAME, channel, len(piece)), piece, END)
    return b"".join(parts)


def _properties(properties: Mapping[str, Any]) -> tuple[int, bytes] | None:
    present = []
    for name, value in properties.items():
        if value is None:
            continue
        spec = PROPERTY_SPEC.get(name)
        if spec is None:
            return None
        present.append((spec, value))
    present.sort(key=_position)
    flags = 0
    parts: list[bytes] = []
    for (_, kind, flag), value in present:
        if kind == "s":
            encoded = _shortstr(value)
        elif kind == "u":
            encoded = _unique_shortstr(value)
        elif kind == "o":
            encoded = (
                _OCTETS[value] if value.__class__ is int and 0 <= value < 256 else None
            )
        else:
            encoded = _table(value)
        if encoded is None:
            return None
        parts.append(encoded)
        flags |= flag
    return flags, b"".join(parts)


def _position(item: tuple[tuple[int, str, int], Any]) -> int:
    return item[0][0]


_OCTETS = [bytes((value,)) for value in range(256)]
#: Encoded strings seen before: header names, methods, content types, reply queues.
_SHORTSTRS: dict[str, bytes] = {}
_LONGSTRS: dict[str, bytes] = {}
#: Longest header value kept: names and methods, not shard keys or error details.
_KEPT_SIZE = 128


def _shortstr(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    encoded = _SHORTSTRS.get(value)
    if encoded is not None:
        return encoded
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw) > 255:
        return None
    encoded = _OCTETS[len(raw)] + raw
    keep(_SHORTSTRS, value, encoded)
    return encoded


def _unique_shortstr(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    try:
        raw = value.encode()
    except UnicodeEncodeError:
        # Bytes that were not UTF-8 (another client's correlation id) were read
        # escaped (see _text): they go back as they came, so its reply matches.
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = value.encode("utf-8", "surrogatepass")
    return _OCTETS[len(raw)] + raw if len(raw) <= 255 else None


def _longstr(value: str) -> bytes:
    encoded = _LONGSTRS.get(value)
    if encoded is None:
        raw = value.encode("utf-8", "surrogatepass")
        encoded = b"S" + UINT32.pack(len(raw)) + raw
        if len(raw) <= _KEPT_SIZE:
            keep(_LONGSTRS, value, encoded)
    return encoded


def _table(table: Any) -> bytes | None:
    if not isinstance(table, dict):
        return None
    fields: list[bytes] = []
    for key, value in table.items():
        name = _shortstr(key)
        if name is None:
            return None
        fields.append(name)
        # The types py-amqp reads back as the same Python values.
        kind = value.__class__
        if kind is str:
            fields.append(_longstr(value))
        elif kind is bool:
            fields.append(b"t\x01" if value else b"t\x00")
        elif kind is int and -(2**31) < value < 2**31:
            fields += (b"I", INT32.pack(value))
        elif kind is float:
            fields += (b"d", DOUBLE.pack(value))
        elif value is None:
            fields.append(b"V")
        else:
            return None
    content = b"".join(fields)
    return UINT32.pack(len(content)) + content
