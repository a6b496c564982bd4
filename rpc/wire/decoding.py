"""Reading a delivery's method and content header without py-amqp's decoder.

Every value RabbitMQ can send is read here, within bounds on nesting and field
counts, so that no message can make a reader raise where it cannot recover, recurse
or allocate without bound: what cannot be read raises :class:`MalformedFrame`, and
the stream stays in step.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import struct
from typing import Any

from rpc.wire.frames import (
    BASIC,
    BODY_SIZE,
    DOUBLE,
    INT32,
    PROPERTIES,
    UINT32,
    keep,
)

#: The first four octets of a basic.deliver method frame's payload.
DELIVER = struct.pack(">HH", BASIC, 60)
_DELIVERY_TAG = struct.Struct(">QB")
_HEADER_START = struct.Struct(">HHQH")
_LONG = struct.Struct(">q")
_TEXTS: dict[bytes, str] = {}


def decode_deliver(payload: bytes) -> tuple[str, int, bool, str, str]:
    """Consumer tag, delivery tag, redelivered, exchange, routing key of a delivery."""
    offset = 4
    consumer_tag, offset = _read_shortstr(payload, offset)
    delivery_tag, bits = _DELIVERY_TAG.unpack_from(payload, offset)
    offset += 9
    exchange, offset = _read_shortstr(payload, offset)
    routing_key, _ = _read_shortstr(payload, offset)
    return consumer_tag, delivery_tag, bool(bits & 1), exchange, routing_key


class MalformedFrame(ValueError):
    """A frame this side cannot read: the stream is still in step, the message not."""


#: Deepest nesting of tables and arrays read in a message's headers: one message
#: must not make a reader recurse, or allocate, without bound.
MAX_HEADER_DEPTH = 32
#: Most fields and array items read in one message's headers, nested ones included.
MAX_HEADER_FIELDS = 1024
#: Longest single string or byte array read in one message's headers, in bytes.
MAX_HEADER_FIELD_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class HeaderLimits:
    """Bounds on what one message's headers may make a reader allocate."""

    max_fields: int = MAX_HEADER_FIELDS
    max_depth: int = MAX_HEADER_DEPTH
    max_field_bytes: int = MAX_HEADER_FIELD_BYTES


DEFAULT_HEADER_LIMITS = HeaderLimits()

#: Message properties as read, in flag order: those written here, plus timestamp and
#: cluster_id.
_READ_PROPERTIES = (
    *PROPERTIES[:9],
    ("timestamp", "T", 0x0040),
    *PROPERTIES[9:],
    ("cluster_id", "s", 0x0004),
)


def decode_content_header(
    payload: bytes, limits: HeaderLimits = DEFAULT_HEADER_LIMITS
) -> tuple[int, dict[str, Any]]:
    """A content header's body size and message properties, as py-amqp names them.

    Every value RabbitMQ can send is read here, so nothing is left to a decoder that
    may raise on it. Anything that cannot be read (a truncated payload, an unknown
    field type, nesting, field counts or a field's size over ``limits``) raises
    MalformedFrame.
    """
    try:
        return _decode_content_header(
            payload,
            [
                limits.max_depth,
                limits.max_fields,
                limits.max_field_bytes,
                limits.max_depth,
                limits.max_fields,
            ],
        )
    except MalformedFrame:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise MalformedFrame(f"unreadable content header: {exc}") from exc


def _decode_content_header(
    payload: bytes, budget: list[int]
) -> tuple[int, dict[str, Any]]:
    _, _, body_size, flags = _HEADER_START.unpack_from(payload, 0)
    if flags & 0x0001:
        raise MalformedFrame("content header with a second property-flags word")
    properties: dict[str, Any] = {}
    offset = 14
    for name, kind, flag in _READ_PROPERTIES:
        if not flags & flag:
            continue
        if kind == "s":
            properties[name], offset = _read_shortstr(payload, offset)
        elif kind == "u":
            end = offset + 1 + payload[offset]
            properties[name] = _text(payload[offset + 1 : end])
            offset = end
        elif kind == "o":
            properties[name] = payload[offset]
            offset += 1
        elif kind == "T":
            (properties[name],) = BODY_SIZE.unpack_from(payload, offset)
            offset += 8
        else:
            properties[name], offset = _read_table(payload, offset, budget)
    if offset > len(payload):
        raise MalformedFrame("content header shorter than its properties")
    return body_size, properties


def _read_shortstr(payload: bytes, offset: int) -> tuple[str, int]:
    end = offset + 1 + payload[offset]
    raw = payload[offset + 1 : end]
    text = _TEXTS.get(raw)
    if text is None:
        text = _utf8(raw)
        if text is None:
            return _text(raw), end
        keep(_TEXTS, raw, text)
    return text, end


def _utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None


def _text(raw: bytes) -> str:
    # Bytes that are not UTF-8 (another client's correlation id, say) still read:
    # raising here would drop the link, and the redelivered message would again.
    text = _utf8(raw)
    return raw.decode("utf-8", "surrogateescape") if text is None else text


def _read_table(
    payload: bytes, offset: int, budget: list[int]
) -> tuple[dict[str, Any], int]:
    """A field table; ``budget`` holds the nesting depth and fields still allowed,
    the longest string allowed, and the two bounds as given (for the messages)."""
    (size,) = UINT32.unpack_from(payload, offset)
    offset += 4
    end = offset + size
    if end > len(payload):
        raise MalformedFrame("field table longer than its frame")
    table: dict[Any, Any] = {}
    while offset < end:
        key_end = offset + 1 + payload[offset]
        raw_key = payload[offset + 1 : key_end]
        key: str | bytes | None = _TEXTS.get(raw_key)
        if key is None:
            key = _utf8(raw_key)
            if key is None:
                key = raw_key  # as py-amqp gives a name that is not UTF-8
            else:
                keep(_TEXTS, raw_key, key)
        table[key], offset = _read_value(payload, key_end, budget)
    if offset != end:
        raise MalformedFrame("field table overruns its size")
    return table, end


def _read_array(
    payload: bytes, offset: int, budget: list[int]
) -> tuple[list[Any], int]:
    (size,) = UINT32.unpack_from(payload, offset)
    offset += 4
    end = offset + size
    if end > len(payload):
        raise MalformedFrame("field array longer than its frame")
    items: list[Any] = []
    while offset < end:
        item, offset = _read_value(payload, offset, budget)
        items.append(item)
    if offset != end:
        raise MalformedFrame("field array overruns its size")
    return items, end


def _read_value(payload: bytes, offset: int, budget: list[int]) -> tuple[Any, int]:
    """One field value, by its type octet, as py-amqp would give it."""
    budget[1] -= 1
    if budget[1] < 0:
        raise MalformedFrame(f"headers hold more than {budget[4]} fields")
    kind = payload[offset]
    offset += 1
    value: Any
    if kind == 0x53:  # S: long string, text when it is UTF-8
        (length,) = UINT32.unpack_from(payload, offset)
        offset += 4
        if length > budget[2]:
            raise MalformedFrame(_too_long("string", length, budget[2]))
        raw = payload[offset : offset + length]
        if len(raw) != length:
            raise MalformedFrame("long string longer than its frame")
        offset += length
        text = _utf8(raw)
        value = raw if text is None else text
    elif kind == 0x74:  # t
        value = payload[offset] != 0
        offset += 1
    elif kind == 0x49:  # I
        (value,) = INT32.unpack_from(payload, offset)
        offset += 4
    elif kind in (0x6C, 0x4C):  # l, L: signed 64 bits
        (value,) = _LONG.unpack_from(payload, offset)
        offset += 8
    elif kind == 0x64:  # d
        (value,) = DOUBLE.unpack_from(payload, offset)
        offset += 8
    elif kind == 0x56:  # V
        value = None
    elif kind in (0x46, 0x41):  # F, A: nested
        budget[0] -= 1
        if budget[0] < 0:
            raise MalformedFrame(
                f"headers nested deeper than {budget[3]} tables or arrays"
            )
        if kind == 0x46:
            value, offset = _read_table(payload, offset, budget)
        else:
            value, offset = _read_array(payload, offset, budget)
        budget[0] += 1
    elif kind == 0x54:  # T: seconds since the epoch
        (seconds,) = BODY_SIZE.unpack_from(payload, offset)
        offset += 8
        value = _timestamp(seconds)
    elif kind == 0x78:  # x: byte array
        (length,) = UINT32.unpack_from(payload, offset)
        offset += 4
        if length > budget[2]:
            raise MalformedFrame(_too_long("byte array", length, budget[2]))
        value = payload[offset : offset + length]
        if len(value) != length:
            raise MalformedFrame("byte array longer than its frame")
        offset += length
    elif kind == 0x44:  # D: scale, then the unscaled value
        scale, unscaled = _DECIMAL.unpack_from(payload, offset)
        offset += _DECIMAL.size
        value = decimal.Decimal(unscaled).scaleb(-scale)
    else:
        fixed = _FIXED_FIELDS.get(kind)
        if fixed is None:
            raise MalformedFrame(f"unknown field type {kind:#04x} in headers")
        (value,) = fixed.unpack_from(payload, offset)
        offset += fixed.size
    return value, offset


#: Field types of a fixed size other than the common ones above, RabbitMQ's way:
#: ``s`` is a signed 16-bit integer there, not a short string.
_FIXED_FIELDS: dict[int, struct.Struct] = {
    0x62: struct.Struct(">b"),  # b
    0x42: struct.Struct(">B"),  # B
    0x73: struct.Struct(">h"),  # s
    0x55: struct.Struct(">h"),  # U
    0x75: struct.Struct(">H"),  # u
    0x69: struct.Struct(">I"),  # i
    0x66: struct.Struct(">f"),  # f
}
_DECIMAL = struct.Struct(">Bi")


def _too_long(kind: str, length: int, limit: int) -> str:
    return (
        f"a header {kind} of {length} bytes is over the limit of {limit} "
        "(max_header_bytes)"
    )


def _timestamp(seconds: int) -> datetime.datetime | int:
    # As py-amqp: a naive UTC datetime; past what datetime holds, the number itself.
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        return seconds


_EPOCH = datetime.datetime(1970, 1, 1)
