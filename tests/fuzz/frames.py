"""AMQP 0-9-1 frames written by hand, so they can carry what no client library would.

py-amqp refuses to encode most of what the fuzzer sends (invalid UTF-8 in a short
string, a timestamp past year 9999, a table nested 5,000 deep), so the fuzzer encodes
its own. Values are tagged with their AMQP field type, as RabbitMQ spells the types:

    ("t", bool)  ("b", int8)  ("B", uint8)  ("s", int16)  ("u", uint16)
    ("I", int32)  ("i", uint32)  ("l", int64)  ("f", float)  ("d", double)
    ("D", (scale, int32))  ("S", bytes)  ("x", bytes)  ("T", uint64)  ("V", None)
    ("A", [tagged, ...])  ("F", [(key bytes, tagged), ...])
    ("deep", (kind "F" or "A", depth, tagged leaf))

Nothing here checks what it is given: a value out of its type's range is cut to fit
(``struct`` would raise), since the point is to write what the far side must survive.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

FRAME_END = b"\xce"
METHOD, HEADER, BODY = 1, 2, 3
BASIC_CLASS = 60
BASIC_PUBLISH = 40

#: Basic properties in flag order, with their AMQP kinds.
PROPERTIES = (
    ("content_type", "shortstr", 0x8000),
    ("content_encoding", "shortstr", 0x4000),
    ("headers", "table", 0x2000),
    ("delivery_mode", "octet", 0x1000),
    ("priority", "octet", 0x0800),
    ("correlation_id", "shortstr", 0x0400),
    ("reply_to", "shortstr", 0x0200),
    ("expiration", "shortstr", 0x0100),
    ("message_id", "shortstr", 0x0080),
    ("timestamp", "timestamp", 0x0040),
    ("type", "shortstr", 0x0020),
    ("user_id", "shortstr", 0x0010),
    ("app_id", "shortstr", 0x0008),
    ("cluster_id", "shortstr", 0x0004),
)

_FIXED = {
    "b": ">b",
    "B": ">B",
    "s": ">h",
    "u": ">H",
    "I": ">i",
    "i": ">I",
    "l": ">q",
    "T": ">Q",
}
_RANGES = {
    "b": (-(2**7), 2**7 - 1),
    "B": (0, 2**8 - 1),
    "s": (-(2**15), 2**15 - 1),
    "u": (0, 2**16 - 1),
    "I": (-(2**31), 2**31 - 1),
    "i": (0, 2**32 - 1),
    "l": (-(2**63), 2**63 - 1),
    "T": (0, 2**64 - 1),
}


def _clamp(kind: str, value: int) -> int:
    low, high = _RANGES[kind]
    return max(low, min(high, int(value)))


def shortstr(raw: bytes) -> bytes:
    raw = raw[:255]
    return bytes((len(raw),)) + raw


def longstr(raw: bytes) -> bytes:
    return struct.pack(">I", len(raw)) + raw


def value(tagged: tuple[str, Any]) -> bytes:
    """One field value, its type octet first."""
    kind, item = tagged
    if kind == "deep":
        return _deep(*item)
    if kind in _FIXED:
        return kind.encode() + struct.pack(_FIXED[kind], _clamp(kind, item))
    if kind == "t":
        return b"t" + (b"\x01" if item else b"\x00")
    if kind == "f":
        return b"f" + struct.pack(">f", item)
    if kind == "d":
        return b"d" + struct.pack(">d", item)
    if kind == "D":
        scale, number = item
        return b"D" + struct.pack(">Bi", scale & 0xFF, _clamp("I", number))
    if kind in ("S", "x"):
        return kind.encode() + longstr(item)
    if kind == "V":
        return b"V"
    if kind == "A":
        return b"A" + longstr(b"".join(value(each) for each in item))
    if kind == "F":
        return b"F" + table(item)
    raise ValueError(f"unknown field kind {kind!r}")


def table(entries: Sequence[tuple[bytes, tuple[str, Any]]]) -> bytes:
    """A field table: its size, then each key and value."""
    return longstr(b"".join(shortstr(key) + value(item) for key, item in entries))


def _deep(kind: str, depth: int, leaf: tuple[str, Any]) -> bytes:
    # Built from the inside out: recursion would stop at Python's own limit.
    encoded = value(leaf)
    for _ in range(depth):
        if kind == "A":
            encoded = b"A" + longstr(encoded)
        else:
            encoded = b"F" + longstr(shortstr(b"k") + encoded)
    return encoded


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def publish_method(
    channel: int, exchange: bytes, routing_key: bytes, *, mandatory: bool = False
) -> bytes:
    payload = struct.pack(">HHH", BASIC_CLASS, BASIC_PUBLISH, 0)
    payload += shortstr(exchange) + shortstr(routing_key)
    payload += bytes((1 if mandatory else 0,))
    return frame(METHOD, channel, payload)


def content_header(
    channel: int, body_size: int, properties: Mapping[str, Any]
) -> bytes:
    """A content header frame: ``properties`` hold raw values of each AMQP kind
    (bytes for short strings, ints for octets and timestamps, entries for headers)."""
    flags = 0
    encoded = b""
    for name, kind, flag in PROPERTIES:
        if name not in properties:
            continue
        flags |= flag
        item = properties[name]
        if kind == "shortstr":
            encoded += shortstr(item)
        elif kind == "octet":
            encoded += bytes((item & 0xFF,))
        elif kind == "timestamp":
            encoded += struct.pack(">Q", _clamp("T", item))
        else:
            encoded += table(item)
    payload = struct.pack(">HHQH", BASIC_CLASS, 0, body_size, flags) + encoded
    return frame(HEADER, channel, payload)


def message(
    channel: int,
    exchange: bytes,
    routing_key: bytes,
    properties: Mapping[str, Any],
    body: bytes,
    *,
    frame_max: int = 131072,
) -> bytes:
    """A whole basic.publish: method, content header and body frames."""
    data = publish_method(channel, exchange, routing_key)
    data += content_header(channel, len(body), properties)
    chunk = max(1, frame_max - 8)
    for start in range(0, len(body), chunk):
        data += frame(BODY, channel, body[start : start + chunk])
    return data
