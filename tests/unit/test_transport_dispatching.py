"""Deliveries to consumers: read whatever their properties hold, and callbacks that
fail (a bug is logged with its traceback, a stop is not)."""

from __future__ import annotations

import logging
import struct
from types import SimpleNamespace

import pytest

from rpc import wire
from rpc.errors import BrokerError
from rpc.transport.dispatching import Dispatcher
from tests.fuzz import frames


def message(body: bytes = b"{}") -> SimpleNamespace:
    return SimpleNamespace(
        properties={"content_type": "application/json"},
        delivery_info={"delivery_tag": 1, "routing_key": "q"},
        body=body,
    )


def failing(exc: Exception):
    def callback(delivery: object) -> None:
        raise exc

    return callback


@pytest.mark.parametrize("down", [True, False])
def test_a_bug_in_a_callback_is_logged_at_error_with_its_traceback(caplog, down):
    dispatcher = Dispatcher("worker", lambda: down)
    on_message = dispatcher.kombu_callback(failing(ValueError("bug")), 1, "ctag")
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "consumer callback failed" in record.getMessage()


def test_broker_error_of_a_stopping_connection_is_logged_at_debug(caplog):
    dispatcher = Dispatcher("worker", lambda: True)
    on_message = dispatcher.kombu_callback(
        failing(BrokerError("not connected to the broker (worker)")), 1, "ctag"
    )
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    (record,) = caplog.records
    assert record.levelno == logging.DEBUG and record.exc_info is None


def test_broker_error_of_a_live_connection_is_still_an_error(caplog):
    dispatcher = Dispatcher("worker", lambda: False)
    on_message = dispatcher.kombu_callback(failing(BrokerError("odd")), 1, "ctag")
    with caplog.at_level(logging.DEBUG, logger="rpc.transport"):
        on_message(message())
    assert [record.levelno for record in caplog.records] == [logging.ERROR]


def test_a_delivery_without_its_consumer_tag_gets_the_one_it_was_consumed_with():
    seen = []
    Dispatcher("worker", lambda: False).kombu_callback(seen.append, 3, "ctag")(
        message(b"x")
    )
    (delivery,) = seen
    assert delivery.consumer_tag == "ctag" and delivery.generation == 3
    assert delivery.body == b"x"


# -- deliveries read off the wire -----------------------------------------------------


def deliver_method(channel: int, consumer_tag: bytes) -> bytes:
    payload = struct.pack(">HH", 60, 60) + frames.shortstr(consumer_tag)
    payload += struct.pack(">QB", 7, 1) + frames.shortstr(b"rpc")
    payload += frames.shortstr(b"svc.method")
    return frames.frame(frames.METHOD, channel, payload)


def hostile_delivery(properties: dict, body: bytes = b"{}") -> bytes:
    return (
        deliver_method(1, b"ctag")
        + frames.content_header(1, len(body), properties)
        + frames.frame(frames.BODY, 1, body)
    )


def read_all(dispatcher: Dispatcher, data: bytes) -> list:
    """Every frame of ``data`` through the dispatcher, as the readers do; what it
    leaves to py-amqp is returned."""
    reader = wire.FrameReader(lambda size: b"", leftover=data)
    left = []
    while reader.has_frame():
        frame = reader.read_frame()
        if (dispatcher.partial and dispatcher.take(frame)) or (
            frame[0] == 1
            and frame[2][:4] == wire.DELIVER
            and dispatcher.deliver(reader, frame)
        ):
            continue
        left.append(frame)
    return left


HOSTILE = {
    "a timestamp past year 9999": {"timestamp": 2**64 - 1},
    "a header nested 5000 deep": {"headers": [(b"k", ("deep", ("F", 5000, ("I", 1))))]},
    "a header timestamp past year 9999": {"headers": [(b"k", ("T", 2**64 - 1))]},
    "an unknown field type": {"headers": [(b"k", ("I", 1))], "content_type": b"x"},
}


@pytest.mark.parametrize("properties", HOSTILE.values(), ids=list(HOSTILE))
def test_a_delivery_py_amqp_could_not_decode_still_reaches_its_consumer(properties):
    seen = []
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", seen.append, 1)
    data = hostile_delivery(properties, b"body")
    if "content_type" in properties:
        # Turn the header's type octet "I" into one no AMQP dialect has.
        data = data.replace(b"\x01kI", b"\x01k?", 1)
    assert read_all(dispatcher, data) == []
    (delivery,) = seen
    assert delivery.body == b"body" and delivery.delivery_tag == 7
    assert delivery.redelivered and delivery.routing_key == "svc.method"
    if delivery.malformed is not None:
        assert delivery.headers == {} and delivery.properties == {}
        assert delivery.raw_properties.startswith(struct.pack(">HHQ", 60, 0, 4))


def test_an_unreadable_content_header_says_why_and_keeps_its_bytes():
    seen = []
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", seen.append, 1)
    data = hostile_delivery({"headers": [(b"k", ("deep", ("A", 100, ("V", None))))]})
    read_all(dispatcher, data)
    (delivery,) = seen
    assert "nested deeper" in (delivery.malformed or "")
    header = data[len(deliver_method(1, b"ctag")) :]
    assert (
        delivery.raw_properties == header[7 : 7 + struct.unpack(">I", header[3:7])[0]]
    )


def test_non_utf8_short_strings_are_read_rather_than_refused():
    seen = []
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", seen.append, 1)
    properties = {
        "correlation_id": b"\xff\xfe",
        "content_type": b"\xc3\x28",
        "type": b"\x80",
    }
    read_all(dispatcher, hostile_delivery(properties))
    (delivery,) = seen
    assert delivery.malformed is None
    assert delivery.correlation_id == b"\xff\xfe".decode("utf-8", "surrogateescape")


def test_a_delivery_split_across_reads_is_taken_as_its_frames_arrive():
    seen = []
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", seen.append, 1)
    data = hostile_delivery({"timestamp": 2**64 - 1}, b"x" * 3000)
    reader = wire.FrameReader(lambda size: b"", leftover=data)
    # Frame by frame, with nothing else buffered at each step.
    method = reader.read_frame()
    rest = wire.FrameReader(lambda size: b"", leftover=b"")
    assert dispatcher.deliver(rest, method) and seen == []
    while reader.has_frame():
        assert dispatcher.take(reader.read_frame())
    assert [delivery.body for delivery in seen] == [b"x" * 3000]
    assert dispatcher.partial == {}


def test_a_connection_lost_midway_forgets_the_half_read_delivery():
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", lambda delivery: None, 1)
    method = wire.FrameReader(lambda size: b"", leftover=deliver_method(1, b"ctag"))
    assert dispatcher.deliver(method, method.read_frame())
    dispatcher.clear()
    assert dispatcher.partial == {}


def test_deliveries_py_amqp_reads_while_it_waits_come_to_us_first():
    # A declaration's answer, with a poison delivery to us read in the same wait:
    # py-amqp gets its answer, never the delivery.
    seen, counted = [], []
    dispatcher = Dispatcher("worker", lambda: False)
    dispatcher.add(1, "ctag", seen.append, 1)
    declare_ok = frames.frame(frames.METHOD, 1, struct.pack(">HH", 50, 11))
    data = hostile_delivery({"timestamp": 2**64 - 1}) + declare_ok
    reader = wire.FrameReader(lambda size: b"", leftover=data)
    read = dispatcher.frames_for_py_amqp(reader, lambda: counted.append(1))
    assert read() == (1, 1, struct.pack(">HH", 50, 11))
    assert len(seen) == 1 and counted


def test_a_memory_message_whose_properties_cannot_be_read_still_arrives():
    seen = []
    odd = SimpleNamespace(
        properties={"application_headers": ["not", "a", "table"]},
        delivery_info={"delivery_tag": "tag-1", "routing_key": "q"},
        body=b"raw",
    )
    Dispatcher("worker", lambda: False).kombu_callback(seen.append, 2, "ctag")(odd)
    (delivery,) = seen
    assert delivery.malformed and delivery.body == b"raw"
    assert delivery.delivery_tag == "tag-1" and delivery.consumer_tag == "ctag"
