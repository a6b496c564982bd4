"""How a reader waits for the socket: what counts as ready, how long a read may wait."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_handler
from amqp.serialization import dumps

from rpc import wire
from rpc.transport import BrokerConnection, Delivery, _pyamqp, reading

WAIT = 10.0


@pytest.fixture
def tls_pair(tmp_path: Path) -> Iterator[tuple[ssl.SSLSocket, ssl.SSLSocket]]:
    """A connected TLS client and server over a local socket pair."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, *request, *names],
        check=True,
        capture_output=True,
        timeout=60,
    )
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.load_verify_locations(cert)
    left, right = socket.socketpair()
    left.settimeout(WAIT)
    right.settimeout(WAIT)
    wrapped: dict[str, ssl.SSLSocket] = {}

    def accept() -> None:
        wrapped["server"] = server_context.wrap_socket(right, server_side=True)

    accepting = threading.Thread(target=accept)
    accepting.start()
    client = client_context.wrap_socket(left, server_hostname="localhost")
    accepting.join(WAIT)
    server = wrapped["server"]
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def test_bytes_tls_already_decrypted_make_the_socket_ready(tls_pair):
    client, server = tls_pair
    # Two frames in one TLS record: reading the first decrypts the second too,
    # and the kernel has nothing left that select() could see.
    server.sendall(b"first frame|second frame")
    assert client.recv(len(b"first frame|")) == b"first frame|"
    assert client.pending() > 0
    assert reading.readable(client, None, WAIT) == [client]


def outcome_of(read: Callable[[int], bytes]) -> BaseException | bytes | None:
    """What ``read(10)`` ends with, on another thread; None if it still waits."""
    outcome: list[BaseException | bytes] = []

    def reading() -> None:
        try:
            outcome.append(read(10))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=reading, daemon=True)
    thread.start()
    thread.join(WAIT)
    return outcome[0] if outcome else None


def test_a_read_the_receive_timeout_ends_raises_a_timeout():
    # The kernel reports SO_RCVTIMEO as EAGAIN, which py-amqp retries in the middle
    # of a frame: it must come as a timeout instead.
    client, server = socket.socketpair()
    with client, server:
        client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200_000)
        )
        amqp_transport = SimpleNamespace(sock=client, _quick_recv=client.recv)
        _pyamqp.bound_reads(amqp_transport, 0.2)
        assert isinstance(outcome_of(amqp_transport._quick_recv), TimeoutError)


def test_a_tls_read_that_gets_no_bytes_gives_up(tls_pair):
    # Python's TLS layer retries a read SO_RCVTIMEO ended: only a timeout of its
    # own ends it.
    client, _ = tls_pair
    client.settimeout(None)  # as py-amqp leaves it
    amqp_transport = SimpleNamespace(sock=client, _quick_recv=client.read)
    _pyamqp.bound_reads(amqp_transport, 0.2)
    assert isinstance(outcome_of(amqp_transport._quick_recv), TimeoutError)


# -- the buffered reader beside other threads ------------------------------------------


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


def delivery_frames(channel: int, consumer_tag: str, body: bytes) -> bytes:
    method = struct.pack(">HH", 60, 60) + dumps("sLbss", (consumer_tag, 1, 0, "", "q"))
    properties = amqp.Message(b"", content_type="application/json")
    header = struct.pack(">HHQ", 60, 0, len(body)) + properties._serialize_properties()
    data = frame(1, channel, method) + frame(2, channel, header)
    return data + (frame(3, channel, body) if body else b"")


def connection_on(
    sock: socket.socket, recv: Callable[[int], bytes]
) -> tuple[BrokerConnection, list[Delivery], list[Any]]:
    """A BrokerConnection reading ``sock`` as its link leaves it once connected, one
    consumer on channel 1; what py-amqp would be handed goes to the third list."""
    connection = BrokerConnection(
        "amqp://localhost", name="t", heartbeat=0, on_connect=lambda channel: None
    )
    link = connection._link
    link.wake_reader, link._wake_writer = socket.socketpair()
    link.wake_reader.setblocking(False)
    to_py_amqp: list[Any] = []
    raw = SimpleNamespace(on_inbound_frame=to_py_amqp.append, bytes_recv=0)
    link.connection = SimpleNamespace(  # type: ignore[assignment]
        _connection=raw, connection_errors=(), channel_errors=()
    )
    link.driver = SimpleNamespace(sock=sock, reader=wire.FrameReader(recv), raw=raw)  # type: ignore[assignment]
    link.channel = SimpleNamespace(channel_id=1)
    link.generation = 1
    link.connected.set()
    seen: list[Delivery] = []
    connection._dispatcher.add(1, "ctag", seen.append, 1)
    return connection, seen, to_py_amqp


def test_frames_read_past_a_synchronous_answer_are_not_left_waiting():
    # A queue declaration's recv() took its declare-ok and, in the same segment, a
    # request for us: select() can no longer see those bytes. The thread waiting in
    # select() must be woken, not left to its timeout.
    waiting_side, broker = socket.socketpair()
    declare_ok = frame(1, 1, struct.pack(">HH", 50, 11))
    arrived = [declare_ok + delivery_frames(1, "ctag", b"{}")]
    connection, seen, _ = connection_on(
        waiting_side, lambda size: arrived.pop() if arrived else b""
    )
    with waiting_side, broker:
        reading = threading.Thread(
            target=connection.read_until, args=(lambda: bool(seen), WAIT), daemon=True
        )
        reading.start()
        time.sleep(0.2)  # the borrower now waits in select()
        started = time.monotonic()
        with connection.channel():
            reader = connection._link.driver.reader  # type: ignore[union-attr]
            assert reader is not None
            reader.read_frame()  # py-amqp's wait() takes its answer
        reading.join(WAIT)
        waited = time.monotonic() - started
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"{}"]
    assert waited < 0.5, f"the buffered request waited {waited:.2f} s"


def test_a_message_still_on_its_way_is_taken_frame_by_frame_as_it_comes():
    # Reading the rest of a message under the lock would hold up every publisher
    # until it came, and past READ_TIMEOUT drop the link; py-amqp, which would
    # read it frame by frame, must never decode a delivery to us either.
    client, broker = socket.socketpair()
    client.settimeout(0.5)
    whole = delivery_frames(1, "ctag", b"x" * 1000)
    connection, seen, to_py_amqp = connection_on(client, client.recv)
    with client, broker:
        broker.sendall(whole[:-500])  # method, header and half the body frame
        connection._reading.drain(client, [client])
        assert seen == [] and 1 in connection._dispatcher.partial
        broker.sendall(whole[-500:])
        connection._reading.drain(client, [client])
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"x" * 1000]
    assert seen[0].content_type == "application/json"
    assert to_py_amqp == [] and connection._dispatcher.partial == {}


def test_a_whole_message_goes_straight_to_its_consumer():
    client, broker = socket.socketpair()
    client.settimeout(WAIT)
    connection, seen, to_py_amqp = connection_on(client, client.recv)
    with client, broker:
        broker.sendall(
            delivery_frames(1, "ctag", b"first")
            + delivery_frames(1, "other-consumer", b"theirs")
            + delivery_frames(1, "ctag", b"")
        )
        connection._reading.drain(client, [client])
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"first", b""]
    assert seen[0].content_type == "application/json"
    assert seen[0].consumer_tag == "ctag" and seen[0].generation == 1
    # Another consumer's delivery is py-amqp's to dispatch, frame by frame.
    assert [kind for kind, _, _ in to_py_amqp] == [1, 2, 3]


def test_frames_of_another_channel_inside_a_message_go_to_py_amqp():
    client, broker = socket.socketpair()
    client.settimeout(WAIT)
    heartbeat, other = (8, 0, b""), (1, 9, b"other method")
    message = delivery_frames(1, "ctag", b"body")
    method_end = 8 + struct.unpack_from(">I", message, 3)[0]
    connection, seen, to_py_amqp = connection_on(client, client.recv)
    with client, broker:
        broker.sendall(
            message[:method_end]
            + frame(*heartbeat)
            + frame(*other)
            + message[method_end:]
        )
        connection._reading.drain(client, [client])
        connection._link.close_wake_sockets()
    # Only the frames in between are py-amqp's; the delivery is still ours.
    assert to_py_amqp == [heartbeat, other]
    assert [delivery.body for delivery in seen] == [b"body"]


def test_a_frame_of_the_wrong_type_inside_a_message_is_an_error():
    client, broker = socket.socketpair()
    client.settimeout(WAIT)
    message = delivery_frames(1, "ctag", b"body")
    method_end = 8 + struct.unpack_from(">I", message, 3)[0]
    connection, seen, _ = connection_on(client, client.recv)
    # py-amqp's own frame handler gets what ours leaves to it.
    raw = connection._link.driver.raw  # type: ignore[union-attr]
    raw.on_inbound_frame = frame_handler(raw, lambda *args: None)
    with client, broker:
        broker.sendall(message[:method_end] + frame(3, 1, b"body"))
        with pytest.raises(UnexpectedFrame):
            connection._reading.drain(client, [client])
        connection._link.close_wake_sockets()
    assert seen == []


# -- an event loop reading its own replies ------------------------------------------


def on_a_loop(test: Callable[[asyncio.AbstractEventLoop], Any]) -> None:
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(test(loop), WAIT))
    finally:
        loop.close()


async def until(predicate: Callable[[], object]) -> None:
    while not predicate():
        await asyncio.sleep(0.001)


def test_a_loop_with_a_call_waiting_reads_deliveries_on_its_own_thread():
    client, broker = socket.socketpair()
    client.settimeout(WAIT)
    connection, seen, _ = connection_on(client, client.recv)
    threads: list[threading.Thread] = []

    def record(delivery: Delivery) -> None:
        seen.append(delivery)
        threads.append(threading.current_thread())

    connection._dispatcher.add(1, "ctag", record, 1)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        assert connection._reading.lender is reader
        broker.sendall(delivery_frames(1, "ctag", b"reply"))
        await until(lambda: seen)
        reader.leave()
        await until(lambda: connection._reading.lender is None)

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"reply"]
    assert threads == [threading.current_thread()]


def test_a_message_cut_off_midway_never_blocks_the_loop():
    client, broker = socket.socketpair()
    client.settimeout(0.5)  # a loop blocked in recv() would fail the link
    whole = delivery_frames(1, "ctag", b"x" * 1000)
    connection, seen, to_py_amqp = connection_on(client, client.recv)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        broker.sendall(whole[:-500])
        await until(lambda: 1 in connection._dispatcher.partial)
        await asyncio.sleep(1)  # the loop keeps running meanwhile
        assert connection.connected and seen == []
        broker.sendall(whole[-500:])
        await until(lambda: seen)
        reader.leave()

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"x" * 1000]
    assert to_py_amqp == []


def test_frames_left_in_the_buffer_are_read_when_the_loop_takes_the_socket():
    client, broker = socket.socketpair()
    connection, seen, _ = connection_on(client, client.recv)
    connection._link.driver.reader._buffer = delivery_frames(1, "ctag", b"kept")  # type: ignore[union-attr]

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        await until(lambda: seen)
        reader.leave()

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"kept"]


def test_a_closing_link_takes_the_socket_back_from_the_loop():
    client, broker = socket.socketpair()
    connection, _, _ = connection_on(client, client.recv)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        assert connection._reading.lender is reader
        connection._reading.link_closed()
        assert connection._reading.lender is None
        await until(lambda: reader._fd is None)  # the loop let go of its descriptor
        reader.leave()

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()


def test_frames_a_synchronous_method_left_buffered_reach_a_loop_that_reads():
    # A declaration under channel() read its answer and, in the same recv(), a
    # delivery: the socket shows nothing more, the loop must be told.
    client, broker = socket.socketpair()
    connection, seen, _ = connection_on(client, client.recv)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        with connection.channel():
            frames = connection._link.driver.reader  # type: ignore[union-attr]
            frames._buffer += delivery_frames(1, "ctag", b"after")
        await until(lambda: seen)
        reader.leave()

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()
    assert [delivery.body for delivery in seen] == [b"after"]


def test_a_link_marked_broken_while_a_loop_reads_goes_back_to_the_io_thread():
    client, broker = socket.socketpair()
    connection, _, _ = connection_on(client, client.recv)

    async def test(loop: asyncio.AbstractEventLoop) -> None:
        reader = connection.loop_reader(loop)
        reader.enter()
        assert connection._reading.lender is reader
        connection._link.failed(OSError("reset by peer"))
        await until(lambda: connection._reading.lender is None)
        await until(lambda: reader._fd is None)
        reader.leave()

    with client, broker:
        on_a_loop(test)
        connection._link.close_wake_sockets()
