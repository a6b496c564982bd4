"""How a reader waits for the socket: what counts as ready, how long a read may wait."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from rpc import transport

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
    assert transport._readable(client, None, WAIT) == [client]


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


def test_a_read_the_receive_timeout_ends_raises_a_timeout(monkeypatch):
    # The kernel reports SO_RCVTIMEO as EAGAIN, which py-amqp retries in the middle
    # of a frame: it must come as a timeout instead.
    monkeypatch.setattr(transport, "READ_TIMEOUT", 0.2)
    client, server = socket.socketpair()
    with client, server:
        client.setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 200_000)
        )
        amqp_transport = SimpleNamespace(sock=client, _quick_recv=client.recv)
        transport._bound_reads(amqp_transport)
        assert isinstance(outcome_of(amqp_transport._quick_recv), TimeoutError)


def test_a_tls_read_that_gets_no_bytes_gives_up(tls_pair, monkeypatch):
    # Python's TLS layer retries a read SO_RCVTIMEO ended: only a timeout of its
    # own ends it.
    monkeypatch.setattr(transport, "READ_TIMEOUT", 0.2)
    client, _ = tls_pair
    client.settimeout(None)  # as py-amqp leaves it
    amqp_transport = SimpleNamespace(sock=client, _quick_recv=client.read)
    transport._bound_reads(amqp_transport)
    assert isinstance(outcome_of(amqp_transport._quick_recv), TimeoutError)
