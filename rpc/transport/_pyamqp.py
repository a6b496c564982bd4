"""The one module that touches py-amqp's private attributes, checked by version.

The hot path skips parts of py-amqp: frames are read through our buffer, publishes
and acks are packed by :mod:`rpc.wire` and written straight to the transport, a reply
and its ack leave in one write. Each of those needs an attribute py-amqp does not
promise to keep. They are all reached here, so a py-amqp release that moves one
breaks this module (and ``tests/unit/test_pyamqp_internals.py`` names which), not a
connection in production.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import amqp

from rpc import wire

#: py-amqp releases whose private attributes this module was written against; keep
#: it the same range as setup.cfg's pin.
KNOWN_VERSIONS = ((5, 1), (6, 0))


def _version(text: str) -> tuple[int, int]:
    major, _, rest = text.partition(".")
    minor = rest.partition(".")[0]
    return int(major), int(minor) if minor.isdigit() else 0


def check_version(text: str) -> None:
    """Refuse a py-amqp release outside :data:`KNOWN_VERSIONS`."""
    low, high = KNOWN_VERSIONS
    if not low <= _version(text) < high:
        raise ImportError(
            f"rpc knows py-amqp >={low[0]}.{low[1]},<{high[0]}: amqp {text} is "
            "installed, whose private attributes rpc's transport relies on may have "
            "moved; install a known release"
        )


check_version(amqp.__version__)


def raw_connection(connection: Any) -> Any:
    """The py-amqp connection under a Kombu one, or None once it is gone.

    Never Kombu's ``connection`` property: on a dead link it silently dials a new
    connection, which would block under our lock and skip ``on_connect``.
    """
    return getattr(connection, "_connection", None)


def socket_of(connection: Any) -> socket.socket | None:
    """The socket under a Kombu connection on py-amqp, looked up once per link.

    Not py-amqp's ``sock`` property: once the link is gone, it warns and tries to
    connect again.
    """
    transport = getattr(raw_connection(connection), "_transport", None)
    sock = getattr(transport, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def skip_poll_before_publish(connection: Any) -> None:
    """Stop py-amqp reading the socket before every publish.

    It does so to catch connection.blocked; our reader reads every frame anyway, so
    that poll (a syscall and a raised timeout per publish) is pure cost. The broker
    still sends connection.blocked: it was negotiated at the handshake, and only
    this local copy changes.
    """
    raw = raw_connection(connection)
    properties = getattr(raw, "client_properties", None)
    if isinstance(properties, dict):
        capabilities = dict(properties.get("capabilities", {}))
        capabilities["connection.blocked"] = False
        raw.client_properties = {**properties, "capabilities": capabilities}


def bound_reads(transport: Any, timeout: float) -> None:
    """Make a read that waits ``timeout`` seconds for bytes raise TimeoutError.

    SO_RCVTIMEO alone does not: on plain TCP the kernel reports it as EAGAIN, which
    py-amqp retries in the middle of a frame, and Python's TLS layer retries it in
    any case. A frame cut midway was then waited for forever, under the lock, where
    neither heartbeats nor ``stop()`` could get at the connection. TLS gets a socket
    timeout of Python's (a poll() before each read); plain TCP keeps its reads bare.
    """
    sock = getattr(transport, "sock", None)
    recv = getattr(transport, "_quick_recv", None)
    if not isinstance(sock, socket.socket) or recv is None:
        return
    if isinstance(sock, ssl.SSLSocket):
        sock.settimeout(timeout)
        return

    def bounded(*args: Any) -> Any:
        try:
            return recv(*args)
        except BlockingIOError as exc:
            raise TimeoutError(f"no bytes for {timeout}s") from exc

    transport._quick_recv = bounded


def buffer_reads(transport: Any) -> wire.FrameReader | None:
    """Have py-amqp read frames through one buffer, many per ``recv()``.

    The reader is installed as the transport's ``read_frame``, so py-amqp's own
    waits (a queue declaration's answer) read through the same buffer.
    """
    if transport is None or getattr(transport, "_quick_recv", None) is None:
        return None

    def lost() -> None:
        transport.connected = False

    # Whatever py-amqp read past the handshake is the start of our stream.
    leftover = bytes(getattr(transport, "_read_buffer", b""))
    transport._read_buffer = b""
    reader = wire.FrameReader(transport._quick_recv, leftover=leftover, on_lost=lost)
    transport.read_frame = reader.read_frame
    return reader


def route_reads(
    transport: Any, read_frame: Callable[[], tuple[int, int, bytes]]
) -> None:
    """Have py-amqp's own reads (its waits for an answer) go through ``read_frame``."""
    transport.read_frame = read_frame


def encodable(message: Any, exchange: str, routing_key: str) -> str | None:
    """Why py-amqp cannot encode ``message`` for this publish, or None if it can.

    py-amqp finds out only in the middle of ``basic_publish``, and says so with
    whatever its encoder raised (a struct.error for a short string over 255
    bytes, an AttributeError for a timestamp that is a number, FrameSyntaxError,
    one of its connection errors, for a value of no AMQP type). Asked first, the
    answer is about the message, and the connection is not given up for it.
    """
    for name in (exchange, routing_key):
        if len(name.encode("utf-8", "surrogatepass")) > 255:
            return f"a name of over 255 bytes: {name[:40]!r}..."
    try:
        message._serialize_properties()
    except Exception as exc:  # RecursionError included
        return f"{type(exc).__name__}: {exc}"
    return None


def writable(channel: Any) -> Any:
    """The py-amqp connection to write ``channel``'s packed frames to, if it may."""
    raw = getattr(channel, "connection", None)  # None once the channel is closed
    if raw is None or getattr(raw, "_transport", None) is None:
        return None
    return raw


def write_frames(raw: Any, frames: bytes) -> None:
    """Write frames packed here; the caller holds the lock, as for any write."""
    raw._transport.write(frames)
    raw.bytes_sent += 1  # heartbeats count writes


def count_read(raw: Any) -> None:
    """Tell py-amqp's heartbeats that a frame came in that it did not read itself."""
    raw.bytes_recv += 1


def hand_frame(raw: Any, frame: tuple[int, int, bytes]) -> None:
    """Give py-amqp a frame read here that is not ours, for its own dispatch."""
    raw.on_inbound_frame(frame)


@contextlib.contextmanager
def one_write(raw: Any) -> Iterator[None]:
    """Send the frames written inside as one socket write; callers hold the lock.

    py-amqp writes every frame through its transport's ``_write``; where that is not
    there, frames go out one by one. ``raw`` is the py-amqp connection.
    """
    transport = getattr(raw, "transport", None)
    send = getattr(transport, "_write", None)
    if transport is None or send is None:
        yield
        return
    own = "_write" in vars(transport)
    chunks: list[bytes] = []
    transport._write = lambda data: chunks.append(bytes(data))
    try:
        yield
    finally:
        if own:
            transport._write = send
        else:
            del transport._write
    if chunks:
        transport.write(b"".join(chunks))
