"""VirtualHosts over the management HTTP API, against a loopback stand-in for it."""

from __future__ import annotations

import base64
import http.server
import json
import socket
import threading
from collections.abc import Iterator

import pytest

from rpc.testing import VirtualHosts
from rpc.testing.vhosts import MANAGEMENT


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[tuple[str, str, str, object]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        auth = self.headers.get("Authorization", "")
        self.requests.append((self.command, self.path, auth, body))
        self.send_response(204 if self.command != "GET" else 200)
        self.end_headers()

    do_GET = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def management() -> Iterator[tuple[str, list]]:
    requests: list = []
    handler = type("Handler", (_Recorder,), {"requests": requests})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_vhosts_are_made_and_deleted_through_the_management_api(management):
    url, requests = management
    vhosts = VirtualHosts("amqp://ann:s%40cret@127.0.0.1:5672//", management_url=url)
    assert vhosts.method == MANAGEMENT
    broker_url = vhosts.create()
    vhost = broker_url.rsplit("/", 1)[1]
    assert broker_url == f"amqp://ann:s%40cret@127.0.0.1:5672/{vhost}"
    vhosts.delete(broker_url)
    vhosts.close()  # also deletes the vhost it made ahead for the next test
    token = "Basic " + base64.b64encode(b"ann:s@cret").decode()
    assert all(auth == token for _, _, auth, _ in requests)
    calls = [(method, path, body) for method, path, _, body in requests]
    assert calls[0] == ("GET", "/api/whoami", None)
    assert ("PUT", f"/api/vhosts/{vhost}", None) in calls
    assert (
        "PUT",
        f"/api/permissions/{vhost}/ann",
        {"configure": ".*", "write": ".*", "read": ".*"},
    ) in calls
    assert ("DELETE", f"/api/vhosts/{vhost}", None) in calls
    made = {path for method, path, _ in calls if method == "PUT" and "/vhosts/" in path}
    deleted = {path for method, path, _ in calls if method == "DELETE"}
    assert len(made) == 2  # this test's, and the spare
    assert made == deleted


def test_without_a_way_to_make_vhosts_the_broker_url_is_shared():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    vhosts = VirtualHosts(
        "amqp://guest:guest@rabbit.example:5672//",
        management_url=f"http://127.0.0.1:{port}",
    )
    assert vhosts.method is None
    assert vhosts.create() == "amqp://guest:guest@rabbit.example:5672//"
    vhosts.delete_later(vhosts.broker_url)
    vhosts.close()
