"""AMQP 0-9-1 frames on the hot path: buffered reads, and publish and ack encoding.

py-amqp is general: it reads every frame in three ``recv()`` calls (header, payload,
end octet) and builds every outgoing frame through a table of method signatures and
all fourteen message properties. A call costs a request and a reply on both sides,
so that generality is paid four times per call. Here the few frames a call needs are
read out of one buffer, many per system call, and the publish and ack a call sends
are packed directly. Anything unusual (a property or header value outside the few
types written here) returns None, and the caller goes through py-amqp as before.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import struct
from collections.abc import Callable, Mapping
from typing import Any

from amqp.exceptions import UnexpectedFrame

#: Bytes asked of the socket per read: many small frames, or a good part of a big one.
RECV_SIZE = 64 * 1024
#: Most asked of one read, whatever size a frame's header claims (a corrupt one
#: could claim 4 GiB): the rest of a big frame comes in several reads.
MAX_RECV = 1024 * 1024
FRAME_END = 0xCE
#: A frame's header is type, channel and size; its end is one octet.
FRAME_HEADER = struct.Struct(">BHI")
FRAME_OVERHEAD = 8

_BASIC = 60
_PUBLISH = 40
_ACK = 80
_METHOD_FRAME = 1
_HEADER_FRAME = 2
_BODY_FRAME = 3

_ACK_FRAME = struct.Struct(">BHIHHQBB")
_PUBLISH_START = struct.Struct(">BHIHHH")
_CONTENT_HEADER = struct.Struct(">BHIHHQH")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
_BODY_SIZE = struct.Struct(">Q")
_END = bytes((FRAME_END,))
#: The publish method's last octet (mandatory and immediate bits), then its frame end.
_MANDATORY = bytes((1, FRAME_END))
_NOT_MANDATORY = bytes((0, FRAME_END))

#: Message properties, in the order of their flag bits (bit 15 first), with their
#: AMQP types: shortstr ("u" for one that differs from message to message, not
#: worth remembering), octet, or the header table. Not here: timestamp, cluster_id.
_PROPERTIES = (
    ("content_type", "s", 0x8000),
    ("content_encoding", "s", 0x4000),
    ("application_headers", "F", 0x2000),
    ("delivery_mode", "o", 0x1000),
    ("priority", "o", 0x0800),
    ("correlation_id", "u", 0x0400),
    ("reply_to", "s", 0x0200),
    ("expiration", "u", 0x0100),
    ("message_id", "u", 0x0080),
    ("type", "s", 0x0020),
    ("user_id", "s", 0x0010),
    ("app_id", "s", 0x0008),
)
_PROPERTY_SPEC = {
    name: (position, kind, flag)
    for position, (name, kind, flag) in enumerate(_PROPERTIES)
}


class FrameReader:
    """Reads frames from one socket through a buffer: one ``recv()`` for many frames.

    ``recv(size)`` is the socket's read; ``leftover`` the bytes already read past the
    handshake; ``on_lost()`` runs when the socket fails or closes. Bytes of a frame
    cut off midway stay in the buffer until the rest arrives.
    """

    __slots__ = ("_buffer", "_lost", "_recv", "_start")

    def __init__(
        self,
        recv: Callable[[int], bytes],
        *,
        leftover: bytes = b"",
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._recv = recv
        self._lost = on_lost
        self._buffer: bytes = leftover
        self._start = 0

    def has_frame(self) -> bool:
        """Whether a whole frame is buffered: it can be read without the socket."""
        # Called without the lock (select()'s caller): look at one snapshot, so a
        # lock holder reading meanwhile makes the answer stale, never an error.
        buffer, start = self._buffer, self._start
        available = len(buffer) - start
        if available < FRAME_OVERHEAD:
            return False
        size: int = _UINT32.unpack_from(buffer, start + 3)[0]
        return available >= size + FRAME_OVERHEAD

    def has_content(self, channel: int) -> bool:
        """Whether the content header and all body frames of the message now
        arriving on ``channel`` are buffered, with nothing in between."""
        buffer, start = self._buffer, self._start
        end = len(buffer)
        if end - start < FRAME_OVERHEAD:
            return False
        kind, chan, size = FRAME_HEADER.unpack_from(buffer, start)
        if (
            kind != _HEADER_FRAME
            or chan != channel
            or end - start < size + 8
            or size < 14
        ):
            return False
        (body_size,) = _BODY_SIZE.unpack_from(buffer, start + 11)
        start += size + FRAME_OVERHEAD
        received = 0
        while received < body_size:
            if end - start < FRAME_OVERHEAD:
                return False
            kind, chan, size = FRAME_HEADER.unpack_from(buffer, start)
            if kind != _BODY_FRAME or chan != channel or end - start < size + 8:
                return False
            received += size
            start += size + FRAME_OVERHEAD
        return True

    def read_frame(self) -> tuple[int, int, bytes]:
        """The next frame as py-amqp's ``(type, channel, payload)``."""
        while not self.has_frame():
            self._fill()
        buffer, start = self._buffer, self._start
        frame_type, channel, size = FRAME_HEADER.unpack_from(buffer, start)
        end = start + 7 + size
        if buffer[end] != FRAME_END:
            raise UnexpectedFrame(
                f"Received frame_end {buffer[end]:#04x} while expecting 0xce"
            )
        payload = buffer[start + 7 : end]
        self._start = end + 1
        return frame_type, channel, payload

    def fill(self) -> None:
        """Read once from the socket: for a caller that was told bytes are there and
        must not wait for the rest of a frame."""
        self._fill()

    def _fill(self) -> None:
        buffer = self._buffer[self._start :]
        missing = RECV_SIZE
        if len(buffer) >= 7:
            (size,) = _UINT32.unpack_from(buffer, 3)
            missing = min(max(missing, size + FRAME_OVERHEAD - len(buffer)), MAX_RECV)
        try:
            data = self._recv(missing)
        except TimeoutError:
            # As py-amqp: a timeout is not a dead link by itself.
            self._buffer, self._start = buffer, 0
            raise
        except OSError:
            self._buffer, self._start = buffer, 0
            if self._lost is not None:
                self._lost()
            raise
        if not data:
            self._buffer, self._start = buffer, 0
            if self._lost is not None:
                self._lost()
            raise OSError("Server unexpectedly closed connection")
        self._buffer, self._start = buffer + data if buffer else data, 0


def ack_frame(channel: int, delivery_tag: int) -> bytes:
    """basic.ack of one delivery."""
    return _ACK_FRAME.pack(
        _METHOD_FRAME, channel, 13, _BASIC, _ACK, delivery_tag, 0, FRAME_END
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
        _PUBLISH_START.pack(_METHOD_FRAME, channel, method_size, _BASIC, _PUBLISH, 0),
        exchange_bytes,
        key_bytes,
        _MANDATORY if mandatory else _NOT_MANDATORY,
        _CONTENT_HEADER.pack(
            _HEADER_FRAME, channel, 14 + len(props), _BASIC, 0, len(body), flags
        ),
        props,
        _END,
    ]
    chunk = frame_max - FRAME_OVERHEAD
    for offset in range(0, len(body), chunk):
        piece = body[offset : offset + chunk]
        parts += (FRAME_HEADER.pack(_BODY_FRAME, channel, len(piece)), piece, _END)
    return b"".join(parts)


def _properties(properties: Mapping[str, Any]) -> tuple[int, bytes] | None:
    present = []
    for name, value in properties.items():
        if value is None:
            continue
        spec = _PROPERTY_SPEC.get(name)
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
#: Strings kept at most; past it they are forgotten and the frequent ones come back
#: (a long-lived worker meets many clients' reply queues over time).
_KEPT = 4096
#: Longest header value kept: names and methods, not shard keys or error details.
_KEPT_SIZE = 128


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= _KEPT:
        cache.clear()
    cache[key] = value


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
    _keep(_SHORTSTRS, value, encoded)
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
        encoded = b"S" + _UINT32.pack(len(raw)) + raw
        if len(raw) <= _KEPT_SIZE:
            _keep(_LONGSTRS, value, encoded)
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
            fields += (b"I", _INT32.pack(value))
        elif kind is float:
            fields += (b"d", _DOUBLE.pack(value))
        elif value is None:
            fields.append(b"V")
        else:
            return None
    content = b"".join(fields)
    return _UINT32.pack(len(content)) + content


# -- reading -------------------------------------------------------------------------

#: The first four octets of a basic.deliver method frame's payload.
DELIVER = struct.pack(">HH", _BASIC, 60)
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
    *_PROPERTIES[:9],
    ("timestamp", "T", 0x0040),
    *_PROPERTIES[9:],
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
            (properties[name],) = _BODY_SIZE.unpack_from(payload, offset)
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
        _keep(_TEXTS, raw, text)
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
    (size,) = _UINT32.unpack_from(payload, offset)
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
                _keep(_TEXTS, raw_key, key)
        table[key], offset = _read_value(payload, key_end, budget)
    if offset != end:
        raise MalformedFrame("field table overruns its size")
    return table, end


def _read_array(
    payload: bytes, offset: int, budget: list[int]
) -> tuple[list[Any], int]:
    (size,) = _UINT32.unpack_from(payload, offset)
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
        (length,) = _UINT32.unpack_from(payload, offset)
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
        (value,) = _INT32.unpack_from(payload, offset)
        offset += 4
    elif kind in (0x6C, 0x4C):  # l, L: signed 64 bits
        (value,) = _LONG.unpack_from(payload, offset)
        offset += 8
    elif kind == 0x64:  # d
        (value,) = _DOUBLE.unpack_from(payload, offset)
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
        (seconds,) = _BODY_SIZE.unpack_from(payload, offset)
        offset += 8
        value = _timestamp(seconds)
    elif kind == 0x78:  # x: byte array
        (length,) = _UINT32.unpack_from(payload, offset)
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


def _too_long(kind: str, length: int, limit: int) -> str:
    return (
        f"a header {kind} of {length} bytes is over the limit of {limit} "
        "(max_header_bytes)"
    )


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


def _timestamp(seconds: int) -> datetime.datetime | int:
    # As py-amqp: a naive UTC datetime; past what datetime holds, the number itself.
    try:
        return _EPOCH + datetime.timedelta(seconds=seconds)
    except OverflowError:
        return seconds


_EPOCH = datetime.datetime(1970, 1, 1)
