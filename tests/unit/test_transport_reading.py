"""How a reader waits for the socket: bytes TLS already decrypted count as ready."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

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
