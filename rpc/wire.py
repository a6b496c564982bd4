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

import struct
from collections.abc import Mapping
from typing import Any

from amqp.exceptions import UnexpectedFrame

#: Bytes asked of the socket per read: many small frames, or a good part of a big one.
RECV_SIZE = 64 * 1024
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
_BODY_HEADER = FRAME_HEADER
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_DOUBLE = struct.Struct(">d")
_FRAME_SIZE = struct.Struct(">I")

#: Message properties, in the order of their flag bits (bit 15 first), with their
#: AMQP types: shortstr, octet, or the header table.
_PROPERTIES = (
    ("content_type", "s", 0x8000),
    ("content_encoding", "s", 0x4000),
    ("application_headers", "F", 0x2000),
    ("delivery_mode", "o", 0x1000),
    ("priority", "o", 0x0800),
    ("correlation_id", "s", 0x0400),
    ("reply_to", "s", 0x0200),
    ("expiration", "s", 0x0100),
    ("message_id", "s", 0x0080),
    ("type", "s", 0x0020),
    ("user_id", "s", 0x0010),
    ("app_id", "s", 0x0008),
)
_KNOWN = frozenset(name for name, _, _ in _PROPERTIES)


class FrameReader:
    """Reads frames from one socket through a buffer: one ``recv()`` for many frames.

    Installed as the transport's ``read_frame``, so py-amqp's own waits (a queue
    declaration's answer) read through the same buffer and never miss a frame.
    Bytes of a frame cut off midway stay in the buffer until the rest arrives.
    """

    __slots__ = ("_buffer", "_recv", "_start", "_transport")

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        self._recv = transport._quick_recv
        # Whatever py-amqp read past the handshake is the start of our stream.
        self._buffer: bytes = bytes(getattr(transport, "_read_buffer", b""))
        transport._read_buffer = b""
        self._start = 0

    def has_frame(self) -> bool:
        """Whether a whole frame is buffered: it can be read without the socket."""
        available = len(self._buffer) - self._start
        if available < FRAME_OVERHEAD:
            return False
        size: int = _FRAME_SIZE.unpack_from(self._buffer, self._start + 3)[0]
        return available >= size + FRAME_OVERHEAD

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

    def _fill(self) -> None:
        buffer = self._buffer[self._start :]
        missing = RECV_SIZE
        if len(buffer) >= 7:
            (size,) = _FRAME_SIZE.unpack_from(buffer, 3)
            missing = max(missing, size + FRAME_OVERHEAD - len(buffer))
        try:
            data = self._recv(missing)
        except OSError:
            self._buffer, self._start = buffer, 0
            self._transport.connected = False
            raise
        if not data:
            self._buffer, self._start = buffer, 0
            self._transport.connected = False
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
    exchange_bytes = exchange.encode()
    key_bytes = routing_key.encode()
    if len(exchange_bytes) > 255 or len(key_bytes) > 255:
        return None
    method_size = 4 + 2 + 1 + len(exchange_bytes) + 1 + len(key_bytes) + 1
    parts = [
        _PUBLISH_START.pack(_METHOD_FRAME, channel, method_size, _BASIC, _PUBLISH, 0),
        bytes((len(exchange_bytes),)),
        exchange_bytes,
        bytes((len(key_bytes),)),
        key_bytes,
        bytes((1 if mandatory else 0, FRAME_END)),
        _CONTENT_HEADER.pack(
            _HEADER_FRAME, channel, 14 + len(props), _BASIC, 0, len(body), flags
        ),
        props,
        b"\xce",
    ]
    chunk = frame_max - FRAME_OVERHEAD
    for offset in range(0, len(body), chunk):
        piece = body[offset : offset + chunk]
        parts += (_BODY_HEADER.pack(_BODY_FRAME, channel, len(piece)), piece, b"\xce")
    return b"".join(parts)


def _properties(properties: Mapping[str, Any]) -> tuple[int, bytes] | None:
    for name in properties:
        if name not in _KNOWN and properties[name] is not None:
            return None
    flags = 0
    parts: list[bytes] = []
    for name, kind, flag in _PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        if kind == "s":
            encoded = _shortstr(value)
        elif kind == "o":
            encoded = bytes((value,)) if isinstance(value, int) else None
        else:
            encoded = _table(value)
        if encoded is None:
            return None
        flags |= flag
        parts.append(encoded)
    return flags, b"".join(parts)


def _shortstr(value: Any) -> bytes | None:
    if not isinstance(value, str):
        return None
    raw = value.encode()
    if len(raw) > 255:
        return None
    return bytes((len(raw),)) + raw


def _table(table: Any) -> bytes | None:
    if not isinstance(table, Mapping):
        return None
    parts: list[bytes] = []
    for key, value in table.items():
        name = _shortstr(key)
        item = _field(value)
        if name is None or item is None:
            return None
        parts += (name, item)
    content = b"".join(parts)
    return _UINT32.pack(len(content)) + content


def _field(value: Any) -> bytes | None:
    # The types py-amqp reads back as the same Python values.
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        return b"S" + _UINT32.pack(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if -(2**31) < value < 2**31:
            return b"I" + _INT32.pack(value)
        return None
    if isinstance(value, float):
        return b"d" + _DOUBLE.pack(value)
    if value is None:
        return b"V"
    return None
