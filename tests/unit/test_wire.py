"""The hot path's own AMQP framing must say exactly what py-amqp would, both ways."""

from __future__ import annotations

import inspect
import struct
import sys
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from amqp.exceptions import UnexpectedFrame
from amqp.serialization import decode_properties_basic, dumps, loads

from rpc import wire
from rpc.transport import _pyamqp
from rpc.wire import encoding, frames

FRAME_MAX = 131072


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


def split_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    frames = []
    offset = 0
    while offset < len(data):
        frame_type, channel, size = struct.unpack_from(">BHI", data, offset)
        assert data[offset + 7 + size] == 0xCE
        frames.append((frame_type, channel, data[offset + 7 : offset + 7 + size]))
        offset += 8 + size
    return frames


class ChunkedTransport:
    """A py-amqp transport whose socket hands out bytes in the given pieces."""

    def __init__(self, pieces: list[bytes | BaseException], leftover: bytes = b""):
        self._pieces: Iterator[bytes | BaseException] = iter(pieces)
        self._read_buffer = leftover
        self.connected = True
        self.asked: list[int] = []

    def reader(self) -> wire.FrameReader:
        """A reader of this transport, as the py-amqp glue installs it."""
        return _pyamqp.buffer_reads(self)  # type: ignore[return-value]

    def _quick_recv(self, size: int) -> bytes:
        self.asked.append(size)
        piece = next(self._pieces, b"")
        if isinstance(piece, BaseException):
            raise piece
        assert len(piece) <= size
        return piece


# -- reading -------------------------------------------------------------------------


def test_many_frames_come_out_of_one_read():
    stream = frame(1, 1, b"method") + frame(2, 1, b"header") + frame(3, 1, b"body")
    source = ChunkedTransport([stream])
    reader = source.reader()
    assert reader.read_frame() == (1, 1, b"method")
    assert reader.has_frame()
    assert reader.read_frame() == (2, 1, b"header")
    assert reader.read_frame() == (3, 1, b"body")
    assert not reader.has_frame()
    assert len(source.asked) == 1


def test_a_frame_split_across_reads_is_put_together():
    data = frame(3, 2, bytes(range(200)))
    pieces: list[bytes | BaseException] = [data[:3], data[3:10], data[10:150]]
    pieces.append(data[150:])
    reader = ChunkedTransport(pieces).reader()
    assert reader.read_frame() == (3, 2, bytes(range(200)))


def test_a_read_that_times_out_midway_keeps_what_it_had():
    data = frame(1, 1, b"x" * 100)
    source = ChunkedTransport([data[:40], TimeoutError("no bytes"), data[40:]])
    reader = source.reader()
    with pytest.raises(TimeoutError):
        reader.read_frame()
    assert not reader.has_frame()
    assert reader.read_frame() == (1, 1, b"x" * 100)


def test_a_big_frame_is_asked_for_whole():
    payload = b"y" * (wire.RECV_SIZE * 2)
    data = frame(3, 1, payload)
    source = ChunkedTransport([data[:20], data[20:]])
    assert source.reader().read_frame() == (3, 1, payload)
    assert source.asked[1] >= len(data) - 20


def test_bytes_read_during_the_handshake_come_first():
    first, second = frame(1, 0, b"tune"), frame(8, 0, b"")
    source = ChunkedTransport([second], leftover=first)
    reader = source.reader()
    assert reader.read_frame() == (1, 0, b"tune")
    assert reader.read_frame() == (8, 0, b"")
    assert source._read_buffer == b""


def test_a_bad_frame_end_is_an_error():
    data = frame(1, 1, b"abc")[:-1] + b"\x00"
    with pytest.raises(UnexpectedFrame):
        ChunkedTransport([data]).reader().read_frame()


def test_a_read_timeout_leaves_the_transport_connected_as_py_amqp_does():
    source = ChunkedTransport([TimeoutError("timed out")])
    with pytest.raises(TimeoutError):
        source.reader().read_frame()
    assert source.connected is True


def test_a_corrupt_frame_size_asks_the_socket_for_a_bounded_read():
    header = struct.pack(">BHI", 3, 1, 2**32 - 1)
    source = ChunkedTransport([header, TimeoutError("no more")])
    with pytest.raises(TimeoutError):
        source.reader().read_frame()
    assert max(source.asked) <= wire.MAX_RECV


def test_has_frame_survives_a_read_by_another_thread_between_its_two_looks():
    # has_frame() runs without the lock (before select()), while a lock holder
    # (a queue declaration waiting for its answer) may read through the buffer.
    reader = ChunkedTransport([]).reader()
    reader._buffer = frame(1, 1, b"declare-ok")
    source, first = inspect.getsourcelines(wire.FrameReader.has_frame)
    size_line = first + next(i for i, t in enumerate(source) if "unpack_from" in t)

    def tracer(frame_: Any, event: str, arg: Any) -> Any:
        if frame_.f_code is wire.FrameReader.has_frame.__code__:
            if event == "line" and frame_.f_lineno == size_line:
                reader.read_frame()  # the other thread's read lands here
            return tracer
        return None

    sys.settrace(tracer)
    try:
        answer = reader.has_frame()
    finally:
        sys.settrace(None)
    assert answer in (True, False)
    assert not reader.has_frame()


def test_a_closed_socket_marks_the_transport_down():
    source = ChunkedTransport([frame(1, 1, b"ab")[:5], b""])
    reader = source.reader()
    with pytest.raises(OSError, match="closed"):
        reader.read_frame()
    assert source.connected is False


# -- publishing ----------------------------------------------------------------------

HEADERS = {
    "x-rpc-version": 1,
    "x-rpc-method": "noop",
    "x-rpc-deadline": 1764556800.125,
    "x-rpc-caller": "client-ab\u00e9",
    "x-rpc-idempotent": True,
    "x-nothing": None,
    "x-negative": -7,
}
PROPERTIES = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "application_headers": HEADERS,
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "abc.1",
    "reply_to": "amq.rabbitmq.reply-to.xyz",
    "expiration": "60000",
    "message_id": "m-1",
    "type": "request",
    "user_id": "guest",
    "app_id": "tests",
}


def decode_publish(data: bytes) -> tuple[list[Any], dict[str, Any], bytes, int]:
    """Method arguments, properties, body and body frame count, read by py-amqp."""
    frames = split_frames(data)
    (method_type, _, method), (header_type, _, header), *bodies = frames
    assert (method_type, header_type) == (1, 2)
    assert struct.unpack_from(">HH", method) == (60, 40)
    arguments, _ = loads("Bssbb", method, 4)
    assert all(kind == 3 for kind, _, _ in bodies)
    size = struct.unpack_from(">Q", header, 4)[0]
    properties, _ = decode_properties_basic(header, 12)
    body = b"".join(payload for _, _, payload in bodies)
    assert len(body) == size
    return arguments, properties, body, len(bodies)


def test_a_publish_reads_back_as_what_was_sent():
    data = wire.publish_frames(
        5, FRAME_MAX, "rpc", "greeter.hello", True, b'{"args":[]}', PROPERTIES
    )
    assert data is not None
    assert {channel for _, channel, _ in split_frames(data)} == {5}
    arguments, properties, body, _ = decode_publish(data)
    assert arguments == [0, "rpc", "greeter.hello", True, False]
    assert properties == PROPERTIES
    assert body == b'{"args":[]}'


def test_it_matches_py_amqps_own_encoding_of_the_properties():
    message = amqp.Message(b"", **PROPERTIES)
    data = wire.publish_frames(1, FRAME_MAX, "", "q", False, b"", PROPERTIES)
    assert data is not None
    header = split_frames(data)[1][2]
    assert header[12:] == message._serialize_properties()


def test_a_body_larger_than_a_frame_is_split():
    body = bytes(range(256)) * 40
    data = wire.publish_frames(1, 4096, "", "q", False, body, {})
    assert data is not None
    _, properties, decoded, frames = decode_publish(data)
    assert decoded == body
    assert frames == -(-len(body) // (4096 - 8))
    assert properties == {}


def test_an_empty_body_has_no_body_frame():
    data = wire.publish_frames(1, FRAME_MAX, "", "q", False, b"", {"type": "t"})
    assert data is not None
    assert len(split_frames(data)) == 2


@pytest.mark.parametrize(
    "properties",
    [
        {"timestamp": 1},
        {"application_headers": {"nested": {"a": 1}}},
        {"application_headers": {"list": [1, 2]}},
        {"application_headers": {"big": 2**40}},
        {"application_headers": {"raw": b"bytes"}},
        {"correlation_id": "x" * 256},
        {"priority": 300},
        {"reply_to": 42},
    ],
)
def test_what_is_not_written_here_is_left_to_py_amqp(properties):
    assert wire.publish_frames(1, FRAME_MAX, "", "q", False, b"", properties) is None


@pytest.mark.parametrize(
    ("routing_key", "properties"),
    [
        # A reply queue name that was read with surrogatepass goes back the same.
        ("amq.rabbitmq.reply-to.\udcff", {"reply_to": "r.\udcfe"}),
        ("q", {"application_headers": {"x-\ud800": "v\udc80"}}),
    ],
)
def test_strings_with_surrogates_are_written_as_py_amqp_writes_them(
    routing_key, properties
):
    data = wire.publish_frames(1, FRAME_MAX, "", routing_key, False, b"", properties)
    assert data is not None
    arguments, decoded, _, _ = decode_publish(data)
    assert arguments[2] == routing_key
    assert decoded == properties


def test_one_off_header_values_are_not_remembered():
    encoding._LONGSTRS.clear()
    for number in range(200):
        headers = {"x-rpc-shard-key": f"{number}:" + "k" * 50_000}
        properties = {"application_headers": headers}
        assert wire.publish_frames(1, FRAME_MAX, "", "q", False, b"", properties)
    assert sum(len(value) for value in encoding._LONGSTRS.values()) < 100_000


def test_remembered_strings_are_bounded_and_come_back_after_a_flood():
    for number in range(frames.KEPT * 2):
        wire.publish_frames(1, FRAME_MAX, "", f"amq.reply.{number}", False, b"", {})
        assert len(encoding._SHORTSTRS) <= frames.KEPT
    wire.publish_frames(1, FRAME_MAX, "", "bench.noop", False, b"", {})
    assert "bench.noop" in encoding._SHORTSTRS


def test_an_ack_reads_back_as_one():
    ((frame_type, channel, payload),) = split_frames(wire.ack_frame(3, 2**40 + 5))
    assert (frame_type, channel) == (1, 3)
    assert struct.unpack_from(">HH", payload) == (60, 80)
    assert loads("Lb", payload, 4)[0] == [2**40 + 5, False]


# -- deliveries ----------------------------------------------------------------------


def header_payload(properties: dict[str, Any], size: int = 0) -> bytes:
    encoded = amqp.Message(b"", **properties)._serialize_properties()
    return struct.pack(">HHQ", 60, 0, size) + encoded


def test_a_delivery_method_decodes_as_py_amqp_does():
    arguments = ("ctag-1", 2**33, True, "rpc", "svc.method")
    payload = struct.pack(">HH", 60, 60) + dumps("sLbss", arguments)
    assert payload.startswith(wire.DELIVER)
    assert wire.decode_deliver(payload) == arguments


@pytest.mark.parametrize(
    "properties",
    [
        PROPERTIES,
        {},
        {"correlation_id": "c\u00e9"},
        # What the broker adds to a dead letter: read by py-amqp instead.
        {
            "application_headers": {
                "x-death": [{"count": 1, "queue": "q", "reason": "rejected"}],
                "x-first-death-reason": "rejected",
            }
        },
        {"timestamp": 1764556800, "content_type": "text/plain"},
        {"application_headers": {"big": 2**40, "small": -(2**31) + 1}},
    ],
)
def test_a_content_header_decodes_as_py_amqp_does(properties):
    payload = header_payload(properties, size=1234)
    size, decoded = wire.decode_content_header(payload)
    assert size == 1234
    assert decoded == decode_properties_basic(payload, 12)[0]


def test_a_header_name_that_is_not_utf8_reads_as_py_amqp_reads_it():
    table = b"\x02\xff\xfe" + b"t\x01"
    payload = (
        struct.pack(">HHQH", 60, 0, 0, 0x2000) + struct.pack(">I", len(table)) + table
    )
    expected = decode_properties_basic(payload, 12)[0]
    assert expected == {"application_headers": {b"\xff\xfe": True}}
    assert wire.decode_content_header(payload)[1] == expected


def test_a_property_that_is_not_utf8_still_reads():
    # py-amqp raises here, which dropped the link for every redelivery.
    raw = b"\xffid"
    payload = struct.pack(">HHQH", 60, 0, 0, 0x0400) + bytes((len(raw),)) + raw
    correlation_id = wire.decode_content_header(payload)[1]["correlation_id"]
    assert correlation_id.encode("utf-8", "surrogateescape") == raw


def test_header_values_that_are_not_text_stay_bytes_as_in_py_amqp():
    table = b"\x03key" + b"S" + struct.pack(">I", 2) + b"\xff\xfe"
    payload = (
        struct.pack(">HHQH", 60, 0, 0, 0x2000) + struct.pack(">I", len(table)) + table
    )
    assert wire.decode_content_header(payload)[1] == {
        "application_headers": {"key": b"\xff\xfe"}
    }
    assert decode_properties_basic(payload, 12)[0]["application_headers"] == {
        "key": b"\xff\xfe"
    }


def test_content_counts_as_buffered_only_whole_and_uninterrupted():
    header = struct.pack(">HHQ", 60, 0, 3) + b"\x00\x00"
    whole = frame(2, 4, header) + frame(3, 4, b"ab") + frame(3, 4, b"c")
    assert ChunkedTransport([], leftover=whole).reader().has_content(4)
    for stream in (
        frame(8, 0, b"") + whole,  # a heartbeat in between
        frame(1, 9, b"other method") + whole,  # another channel's frame
        whole[:-3],  # the last body frame still on its way
        frame(3, 4, b"abc"),  # a body where the header belongs
    ):
        reader = ChunkedTransport([], leftover=stream).reader()
        assert not reader.has_content(4)


def test_a_correlation_id_that_is_not_utf8_goes_back_as_it_came():
    # A Go or Java client's raw-byte id: its reply must carry the same bytes.
    raw = b"\xff\xfe\x00id\x80"
    payload = struct.pack(">HHQH", 60, 0, 0, 0x0400) + bytes((len(raw),)) + raw
    correlation_id = wire.decode_content_header(payload)[1]["correlation_id"]
    data = wire.publish_frames(
        1, FRAME_MAX, "", "q", False, b"", {"correlation_id": correlation_id}
    )
    assert data is not None
    header = split_frames(data)[1][2]
    assert header[14:] == bytes((len(raw),)) + raw
