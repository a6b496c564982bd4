"""The py-amqp internals ``rpc.transport._pyamqp`` relies on, one test per attribute.

A py-amqp release that renames or moves one fails the test named after it, rather
than corrupting a live connection. No broker needed: objects are built without
connecting, a transport is set up on a local socket pair.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator

import amqp
import amqp.abstract_channel
import amqp.transport
import kombu
import pytest

from rpc.transport import _pyamqp


@pytest.fixture
def connection() -> amqp.Connection:
    return amqp.Connection(host="localhost:5672")


@pytest.fixture
def transport() -> Iterator[amqp.transport.TCPTransport]:
    """A TCP transport set up as after its connect, on a local socket pair."""
    left, right = socket.socketpair()
    tcp = amqp.transport.TCPTransport("localhost:5672")
    tcp.sock = left
    tcp._setup_transport()
    try:
        yield tcp
    finally:
        left.close()
        right.close()


def test_the_installed_version_is_known():
    _pyamqp.check_version(amqp.__version__)


@pytest.mark.parametrize("version", ["5.0.9", "6.0.0", "7.1"])
def test_an_unknown_version_is_refused_naming_the_known_ones(version):
    with pytest.raises(ImportError, match=r">=5\.1,<6"):
        _pyamqp.check_version(version)


def test_kombu_connection_keeps_its_py_amqp_connection_in_connection_attribute():
    assert kombu.Connection("amqp://localhost//")._connection is None
    source = inspect.getsource(
        inspect.getattr_static(kombu.Connection, "connection").fget
    )
    assert "self._connection" in source


def test_connection_keeps_its_transport_in_transport_attribute(connection):
    assert "_transport" in vars(connection)
    assert isinstance(inspect.getattr_static(amqp.Connection, "transport"), property)


def test_connection_client_properties_is_a_dict(connection):
    assert isinstance(connection.client_properties, dict)


def test_connection_counts_bytes_sent_and_received_for_heartbeats(connection):
    assert isinstance(connection.bytes_sent, int)
    assert isinstance(connection.bytes_recv, int)
    source = inspect.getsource(amqp.Connection.heartbeat_tick)
    assert "bytes_sent" in source and "bytes_recv" in source


def test_connection_on_inbound_frame_is_a_settable_property():
    handler = inspect.getattr_static(amqp.Connection, "on_inbound_frame")
    assert isinstance(handler, property) and handler.fset is not None


def test_connection_frame_max_is_an_int(connection):
    assert isinstance(connection.frame_max, int)


def test_channel_knows_its_connection_and_id():
    source = inspect.getsource(amqp.abstract_channel.AbstractChannel.__init__)
    assert "self.connection = connection" in source
    assert "self.channel_id = channel_id" in source


def test_transport_quick_recv_is_the_socket_read(transport):
    assert callable(transport._quick_recv)
    assert "_quick_recv" in inspect.getsource(amqp.transport.SSLTransport)


def test_transport_read_buffer_holds_bytes_read_ahead(transport):
    assert isinstance(transport._read_buffer, bytes)
    source = inspect.getsource(amqp.transport.TCPTransport._read)
    assert "_read_buffer" in source


def test_transport_write_goes_through_write_attribute(transport):
    assert "_write" in vars(transport) and callable(transport._write)
    assert "self._write(" in inspect.getsource(amqp.transport._AbstractTransport.write)


def test_transport_read_frame_may_be_replaced(transport):
    def replaced() -> None:
        pass

    transport.read_frame = replaced
    assert transport.read_frame is replaced


def test_transport_has_connected_flag_and_socket(transport):
    assert isinstance(transport.connected, bool)
    assert isinstance(transport.sock, socket.socket)


def test_the_frame_reader_takes_over_the_read_buffer(transport):
    transport._read_buffer = b"\x08\x00\x00\x00\x00\x00\x00\xce"
    reader = _pyamqp.buffer_reads(transport)
    assert reader is not None
    assert transport._read_buffer == b""
    assert transport.read_frame == reader.read_frame
    assert reader.read_frame() == (8, 0, b"")


def test_one_write_gathers_what_write_sends(transport):
    sent: list[bytes] = []
    transport._write = sent.append
    raw = type("Raw", (), {"transport": transport})()
    with _pyamqp.one_write(raw):
        transport.write(b"first")
        transport.write(b"second")
    assert sent == [b"firstsecond"]


def test_a_message_is_serialized_by_its_private_serialize_properties():
    message = amqp.Message(b"", content_type="application/json")
    assert _pyamqp.encodable(message, "", "q") is None


@pytest.mark.parametrize(
    ("properties", "routing_key"),
    [
        ({"priority": 300}, "q"),  # over an octet
        ({"correlation_id": "\udcff" * 100}, "q"),  # 300 bytes: over a short string
        ({"application_headers": {"d": {"e": object()}}}, "q"),
        ({}, "k" * 256),
    ],
)
def test_what_py_amqp_cannot_encode_is_said_before_anything_is_written(
    properties, routing_key
):
    message = amqp.Message(b"", **properties)
    assert _pyamqp.encodable(message, "", routing_key) is not None


def test_py_amqp_reads_frames_through_its_transport_read_frame(transport):
    frames = iter([(8, 0, b"")])
    _pyamqp.route_reads(transport, lambda: next(frames))
    assert transport.read_frame() == (8, 0, b"")
