"""Frame layout shared by the encoder and the decoder, and the buffered frame reader.

py-amqp reads every frame in three ``recv()`` calls (header, payload, end octet).
Here the frames of many calls are read out of one buffer, many per system call.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
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

BASIC = 60
PUBLISH = 40
ACK = 80
METHOD_FRAME = 1
HEADER_FRAME = 2
BODY_FRAME = 3

ACK_FRAME = struct.Struct(">BHIHHQBB")
PUBLISH_START = struct.Struct(">BHIHHH")
CONTENT_HEADER = struct.Struct(">BHIHHQH")
INT32 = struct.Struct(">i")
UINT32 = struct.Struct(">I")
DOUBLE = struct.Struct(">d")
BODY_SIZE = struct.Struct(">Q")
END = bytes((FRAME_END,))
#: The publish method's last octet (mandatory and immediate bits), then its frame end.
MANDATORY = bytes((1, FRAME_END))
NOT_MANDATORY = bytes((0, FRAME_END))

#: Message properties, in the order of their flag bits (bit 15 first), with their
#: AMQP types: shortstr ("u" for one that differs from message to message, not
#: worth remembering), octet, or the header table. Not here: timestamp, cluster_id.
PROPERTIES = (
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
PROPERTY_SPEC = {
    name: (position, kind, flag)
    for position, (name, kind, flag) in enumerate(PROPERTIES)
}


#: Strings kept at most in a codec's cache; past it they are forgotten and the
#: frequent ones come back (a long-lived worker meets many clients' reply queues).
KEPT = 4096


def keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Remember ``value`` in a codec cache that never grows past :data:`KEPT`."""
    if len(cache) >= KEPT:
        cache.clear()
    cache[key] = value


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
        size: int = UINT32.unpack_from(buffer, start + 3)[0]
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
            kind != HEADER_FRAME
            or chan != channel
            or end - start < size + 8
            or size < 14
        ):
            return False
        (body_size,) = BODY_SIZE.unpack_from(buffer, start + 11)
        start += size + FRAME_OVERHEAD
        received = 0
        while received < body_size:
            if end - start < FRAME_OVERHEAD:
                return False
            kind, chan, size = FRAME_HEADER.unpack_from(buffer, start)
            if kind != BODY_FRAME or chan != channel or end - start < size + 8:
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
            (size,) = UINT32.unpack_from(buffer, 3)
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
