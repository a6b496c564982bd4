"""The HTTP gateway as a user runs it: `rpc gateway`, `rpc run` daemons, real broker."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import select
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager
from typing import IO

import pytest

from rpc import ClusterProxy, Config, RemoteError
from rpc.testing import ServiceCluster, VirtualHosts
from services.compute import Compute
from services.concierge import Concierge
from services.greeter import Greeter
from tests.integration.daemons import (
    PROJECT_ROOT,
    daemons,
    project_env,
    rpc_command,
    stop,
    wait_until_served,
)
from tests.integration.faults import wait_for

EXAMPLES = [
    "services.greeter:Greeter",
    "services.greeter:Frontend",
    "services.compute:Compute",
    "services.concierge:Concierge",
]
MAX_BODY = 4096


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def exchange(
    base: str,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
):
    """(status, decoded JSON body, response headers) of one request.

    Error statuses are returned too. A body given as an iterable of bytes is sent
    with chunked transfer encoding, with no Content-Length.
    """
    request = urllib.request.Request(
        base + path, data=body, method=method, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read()), error.headers


def http(
    base: str,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 60,
):
    """(status, decoded JSON body) of one request; error statuses are returned too."""
    status, value, _ = exchange(base, method, path, body, headers, timeout)
    return status, value


def post(base: str, path: str, value: object, **kwargs):
    return http(base, "POST", path, json.dumps(value).encode(), **kwargs)


@contextmanager
def gateway(
    broker_url: str, *args: str, log: IO[bytes] | None = None, **env: str
) -> Iterator[str]:
    """Run `rpc gateway` on a free loopback port; yield its base URL once it answers.

    Its standard error goes to ``log`` if given. Without tokens (``--tokens-file``
    or ``RPC_GATEWAY_TOKENS``) it serves anonymous requests: these tests are about
    HTTP, test_gateway_access.py about who may call.
    """
    if not {"--tokens-file", "--allow-anonymous"} & set(args) and (
        "RPC_GATEWAY_TOKENS" not in env
    ):
        args = ("--allow-anonymous", *args)
    port = free_port()
    process = subprocess.Popen(
        rpc_command("gateway", "--port", str(port), *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE if log is None else log,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (
                process.stderr.read().decode() if process.stderr else "exited"
            )
            try:
                http(base, "GET", "/health", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield base
    finally:
        stop([process])


def wait_until_all_served(broker_url: str, calls: dict[str, list[object]]) -> None:
    """Call each ``service.method`` until its queue exists."""
    with ClusterProxy(config=Config(broker_url=broker_url)) as cluster:
        for target, args in calls.items():
            service, method = target.split(".")
            wait_until_served(cluster, service, method, args, timeout=60)


@pytest.fixture(scope="module")
def module_broker_url(rpc_vhosts: VirtualHosts) -> Iterator[str]:
    """One vhost for the module: the daemons and the gateway are started once."""
    url = rpc_vhosts.create()
    try:
        yield url
    finally:
        rpc_vhosts.delete_later(url)


@pytest.fixture(scope="module")
def base(module_broker_url: str) -> Iterator[str]:
    with daemons(module_broker_url, EXAMPLES):
        wait_until_all_served(
            module_broker_url,
            {
                "greeter.hello": ["ready"],
                "frontend.welcome": ["ready"],
                "compute.ping": [],
                "concierge.pause": [0],
            },
        )
        with gateway(module_broker_url, "--max-body", str(MAX_BODY)) as url:
            yield url


def test_post_calls_with_keyword_or_positional_arguments(base):
    assert post(base, "/greeter/hello", {"name": "Ada"}) == (200, "Hello, Ada!")
    assert post(base, "/greeter/hello", ["Bob"]) == (200, "Hello, Bob!")
    assert post(base, "/frontend/welcome", {"user": "cy"}) == (200, "HELLO, CY!")
    assert post(base, "/compute/compute", {"count": 10, "seed": 1})[0] == 200
    assert post(base, "/compute/ping", None) == (200, "pong")
    assert http(base, "POST", "/compute/ping") == (200, "pong")  # empty body


def test_async_example_service_through_the_gateway(base):
    status, greetings = post(base, "/concierge/greet_all", {"names": ["a", "b", "c"]})
    assert status == 200
    assert greetings == ["Hello, a!", "Hello, b!", "Hello, c!"]


def test_concurrent_requests_all_complete(base):
    with concurrent.futures.ThreadPoolExecutor(max_workers=32) as pool:
        futures = [
            pool.submit(post, base, "/concierge/pause", {"seconds": 0.2})
            for _ in range(64)
        ]
        results = [future.result(timeout=120) for future in futures]
    assert results == [(200, 0.2)] * 64


def test_unknown_service_or_method_is_404(base):
    status, body = post(base, "/nobody/hello", {})
    assert status == 404
    assert body["error"]["type"] == "UnknownServiceError"
    status, body = post(base, "/greeter/missing", {})
    assert status == 404
    assert body["error"]["type"] == "MethodNotFoundError"
    assert "no method 'missing'" in body["error"]["message"]
    assert post(base, "/greeter/not-a-method", {})[0] == 404
    assert http(base, "GET", "/greeter/hello/extra")[0] == 404


def test_bad_arguments_are_422(base):
    status, body = post(base, "/greeter/hello", {})
    assert status == 422
    assert body["error"]["type"] == "InvalidArgumentsError"
    assert "missing a required argument" in body["error"]["message"]
    assert post(base, "/greeter/hello", {"name": "x", "bogus": 1})[0] == 422


def test_remote_error_is_502_with_type_and_message(base):
    status, body = post(base, "/compute/compute", {"count": -1})
    assert status == 502
    assert body["error"]["type"] == "ValueError"
    assert body["error"]["message"].startswith("count must be between 0 and")
    assert body["error"]["service"] == "compute"
    assert "traceback" not in body["error"]


def test_timeout_is_504_by_header_or_query(base):
    status, body = post(
        base, "/concierge/pause", {"seconds": 5}, headers={"X-Rpc-Timeout": "0.5"}
    )
    assert status == 504
    assert body["error"]["type"] == "CallTimeoutError"
    assert post(base, "/concierge/pause?timeout=0.5", {"seconds": 5})[0] == 504
    assert post(base, "/concierge/pause?timeout=10", {"seconds": 0})[0] == 200


def test_malformed_or_oversized_requests_get_a_clear_4xx(base):
    cases = [
        (b"{not json", 400, "MalformedRequestError"),
        (b"42", 400, "MalformedRequestError"),
        (b'"text"', 400, "MalformedRequestError"),
        (b"\xff\xfe", 400, "MalformedRequestError"),
        (b"[" * 2000, 400, "MalformedRequestError"),  # nested too deep for JSON
        (b'["\\ud800"]', 400, "MalformedRequestError"),  # half a surrogate pair
        (json.dumps(["x" * MAX_BODY]).encode(), 413, "PayloadTooLargeError"),
        # Without a Content-Length: the limit holds for a chunked body too.
        (iter([b'["', b"x" * MAX_BODY, b'"]']), 413, "PayloadTooLargeError"),
    ]
    for body, status, error_type in cases:
        got_status, got = http(base, "POST", "/greeter/hello", body)
        assert (got_status, got["error"]["type"]) == (status, error_type), body
    # A compressed body is taken, and the limit holds for what it inflates to.
    gzipped = {"Content-Encoding": "gzip"}
    small = gzip.compress(b'["zipped"]')
    assert http(base, "POST", "/greeter/hello", small, gzipped) == (
        200,
        "Hello, zipped!",
    )
    bomb = gzip.compress(json.dumps(["x" * 100 * MAX_BODY]).encode())
    assert len(bomb) < MAX_BODY
    status, got = http(base, "POST", "/greeter/hello", bomb, gzipped)
    assert (status, got["error"]["type"]) == (413, "PayloadTooLargeError")
    status, got = http(base, "POST", "/greeter/hello", b'["not gzip"]', gzipped)
    assert (status, got["error"]["type"]) == (400, "MalformedRequestError")
    for bad in ("abc", "-1", "0", "nan", "100000"):
        status, got = post(
            base, "/greeter/hello", ["x"], headers={"X-Rpc-Timeout": bad}
        )
        assert status == 400, bad
        assert got["error"]["type"] == "InvalidTimeout"
    assert http(base, "GET", "/greeter/hello")[0] == 405
    # Nothing above hurt the gateway.
    assert post(base, "/greeter/hello", ["still here"]) == (200, "Hello, still here!")


def test_health_reports_a_connected_broker(base):
    assert http(base, "GET", "/health") == (
        200,
        {"status": "ok", "broker": "connected"},
    )


def test_services_lists_what_the_running_workers_describe(base, module_broker_url):
    status, listing = http(base, "GET", "/services")
    assert status == 200
    services = listing["services"]
    assert set(services) == {"compute", "concierge", "frontend", "greeter"}
    hello = services["greeter"]["methods"]["hello"]
    assert hello["signature"] == "(name: 'str') -> 'str'"
    assert hello["doc"] == "Greet someone by name."
    assert services["concierge"]["methods"]["pause"]["idempotent"] is True
    assert services["greeter"]["workers"] == 1
    # Start one more service: it is listed while it runs, and not once it stops.
    echo = "tests.integration.sample_services:Echo"
    with daemons(module_broker_url, [echo]):
        wait_until_all_served(module_broker_url, {"echo.echo": ["ready"]})
        assert "echo" in http(base, "GET", "/")[1]["services"]
    assert "echo" not in http(base, "GET", "/services")[1]["services"]


def test_arguments_over_the_message_limit_are_413(base, module_broker_url):
    # The body fits --max-body, but the request would be over max_message_bytes.
    with gateway(module_broker_url, RPC_MAX_MESSAGE_BYTES="1024") as small:
        status, body = post(small, "/greeter/hello", ["x" * 2000])
        assert status == 413
        assert body["error"]["type"] == "PayloadTooLargeError"
        assert "over the limit of 1024" in body["error"]["message"]
        assert post(small, "/greeter/hello", ["x"]) == (200, "Hello, x!")


def test_services_answers_as_soon_as_the_workers_have(base, module_broker_url):
    # With an upper bound longer than the request may take, only the answers
    # arriving, then stopping, can end each listing.
    with gateway(module_broker_url, "--discovery-wait", "120") as patient:
        for _ in range(3):
            status, listing = http(patient, "GET", "/services", timeout=60)
            assert status == 200
            assert set(listing["services"]) == {
                "compute",
                "concierge",
                "frontend",
                "greeter",
            }


def test_unreachable_broker_is_503_and_the_gateway_keeps_serving():
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    with gateway(url, RPC_CONNECT_TIMEOUT="1") as base:
        assert http(base, "GET", "/health") == (
            503,
            {"status": "unavailable", "broker": "disconnected"},
        )
        status, body, headers = exchange(base, "POST", "/greeter/hello", b'["x"]')
        assert status == 503
        assert body["error"]["type"] == "BrokerError"
        assert headers["Retry-After"] == "1"
        assert http(base, "GET", "/services")[0] == 503


def test_remote_error_types_map_like_the_python_client(base, module_broker_url):
    # The same call through the Python client raises what the gateway reports.
    config = Config(broker_url=module_broker_url)
    with ClusterProxy(config=config) as cluster, pytest.raises(RemoteError) as caught:
        cluster.compute.compute(count=-1)
    status, body = post(base, "/compute/compute", {"count": -1})
    assert (status, body["error"]["type"]) == (502, caught.value.exc_type)


def test_the_gateway_rides_out_a_broker_outage(broker_url, tcp_proxy, rpc_cluster):
    # The workers reach the broker directly; only the gateway's connection fails.
    workers = rpc_cluster.start(Greeter, Concierge, Compute)
    slow = {"X-Rpc-Timeout": "120"}
    with (
        gateway(tcp_proxy.url_for(broker_url)) as base,
        concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool,
    ):
        assert post(base, "/greeter/hello", ["before"]) == (200, "Hello, before!")
        assert post(base, "/concierge/pause", {"seconds": 0}) == (200, 0)  # idempotent
        # Two calls in flight when the connection goes: only the idempotent one
        # is sent again.
        retried = pool.submit(
            post, base, "/concierge/pause", {"seconds": 2}, headers=slow, timeout=150
        )
        failed = pool.submit(
            post, base, "/compute/compute", {"count": 10_000_000}, headers=slow
        )
        wait_for(lambda: workers.in_flight == 2, 30, "both calls to be running")
        # The outage: the gateway's connection is reset, and its reconnection
        # attempts hang (accepted, never answered) until the broker is back.
        tcp_proxy.blackhole()
        tcp_proxy.cut()
        status, body = failed.result(timeout=30)
        assert (status, body["error"]["type"]) == (503, "BrokerError")
        wait_for(
            lambda: http(base, "GET", "/health", timeout=10)[0] == 503,
            30,
            "the gateway to see the outage",
        )
        assert http(base, "GET", "/health", timeout=10) == (
            503,
            {"status": "unavailable", "broker": "disconnected"},
        )
        # New calls fail at once with 503, many at a time, whatever their timeout.
        answers = list(
            pool.map(
                lambda n: post(
                    base, "/greeter/hello", [f"n{n}"], headers=slow, timeout=5
                ),
                range(32),
            )
        )
        assert {(status, body["error"]["type"]) for status, body in answers} == {
            (503, "BrokerError")
        }
        status, _, headers = exchange(
            base, "POST", "/concierge/pause", b'{"seconds": 0}', timeout=5
        )
        assert (status, headers["Retry-After"]) == (503, "1")  # idempotent too
        assert http(base, "GET", "/services", timeout=5)[0] == 503
        assert not retried.done()
        tcp_proxy.restore()
        wait_for(
            lambda: http(base, "GET", "/health", timeout=10)[0] == 200,
            60,
            "the gateway to reconnect",
        )
        assert post(base, "/greeter/hello", ["after"]) == (200, "Hello, after!")
        assert retried.result(timeout=120) == (200, 2)
        assert "greeter" in http(base, "GET", "/services")[1]["services"]


def test_the_gateway_serves_again_after_the_broker_restarts(private_broker):
    # A broker of the test's own: stopped cleanly (it closes every connection),
    # then started again with its data, as an upgrade or a reboot does.
    with ServiceCluster(private_broker.url) as workers:
        workers.start(Greeter)
        with gateway(private_broker.url) as base:
            assert post(base, "/greeter/hello", ["before"]) == (200, "Hello, before!")
            private_broker.stop()
            wait_for(
                lambda: http(base, "GET", "/health", timeout=10)[0] == 503,
                30,
                "the gateway to see the broker gone",
            )
            status, body = post(base, "/greeter/hello", ["down"], timeout=5)
            assert (status, body["error"]["type"]) == (503, "BrokerError")
            private_broker.start()
            wait_for(
                lambda: post(base, "/greeter/hello", ["after"], timeout=10)[0] == 200,
                90,
                "calls through the gateway to succeed again",
            )
            assert http(base, "GET", "/health") == (
                200,
                {"status": "ok", "broker": "connected"},
            )


# -- hardening: what a hostile or broken client gets ----------------------------------


def connect(base: str, timeout: float = 10) -> socket.socket:
    host, _, port = base.removeprefix("http://").rpartition(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response off ``sock``: status, headers (names lower-cased), body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk or len(data) > 1 << 20:
            raise ConnectionError(f"no whole response, got {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body[:length]


def read_to_end(sock: socket.socket) -> bytes:
    """All the gateway sends until it closes; a reset counts as a close."""
    data = b""
    try:
        while len(data) < 1 << 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass
    return data


def json_error_of(status: int, headers: dict[str, str], body: bytes) -> str:
    """The error type of a response of the documented shape; fails on any other."""
    assert headers["content-type"].startswith("application/json"), (status, body)
    error = json.loads(body)["error"]
    assert set(error) == {"type", "message"}, error
    assert error["message"], error
    return str(error["type"])


def raw(base: str, request: bytes) -> tuple[int, str, dict[str, str]]:
    """(status, error type, headers) of ``request`` sent as raw bytes."""
    with connect(base) as sock:
        sock.sendall(request)
        status, headers, body = read_response(sock)
    return status, json_error_of(status, headers, body), headers


def test_names_too_long_to_route_are_404_and_nothing_leaks(base, module_broker_url):
    # Each name alone is valid: the routing key, service.method, is over the 255
    # bytes of an AMQP short string.
    with tempfile.TemporaryFile() as log:
        with gateway(module_broker_url, log=log) as own:
            for path in (
                "/" + "s" * 300 + "/hello",
                "/greeter/" + "m" * 300,
                "/" + "s" * 200 + "/" + "m" * 60,
            ):
                status, body = post(own, path, {})
                assert status == 404, (path, body)
                assert body["error"]["type"] == "UnknownServiceError"
                assert "routing key" in body["error"]["message"]
            # Just under the limit, the call is made, and the worker answers.
            status, body = post(own, "/greeter/" + "m" * 240, {})
            assert (status, body["error"]["type"]) == (404, "MethodNotFoundError")
            assert post(own, "/greeter/hello", ["after"]) == (200, "Hello, after!")
        log.seek(0)
        printed = log.read().decode()
    assert "never retrieved" not in printed
    assert "Traceback" not in printed


def test_arguments_nested_too_deep_are_400(base):
    def nested(depth: int) -> bytes:
        return b"[" * depth + b'"x"' + b"]" * depth

    status, body = http(base, "POST", "/greeter/hello", nested(300))
    assert (status, body["error"]["type"]) == (400, "MalformedRequestError")
    assert "nested too deep" in body["error"]["message"]
    # As deep as a request can carry: the call is made.
    status, greeting = http(base, "POST", "/greeter/hello", nested(250))
    assert status == 200
    assert greeting.startswith("Hello, " + "[" * 249)


def test_content_encodings_other_than_gzip_deflate_identity_are_415(base):
    for coding in ("zstd9", "compress", "br", "zstd", "x-gzip", "gzip, gzip"):
        status, body, headers = exchange(
            base,
            "POST",
            "/greeter/hello",
            b'["x"]',
            {"Content-Encoding": coding},
        )
        assert status == 415, (coding, body)
        assert body["error"]["type"] == "UnsupportedContentEncodingError"
        assert headers["Accept-Encoding"] == "deflate, gzip, identity"
    encoded = {
        "identity": b'["plain"]',
        "deflate": zlib.compress(b'["deflated"]'),
        "gzip": gzip.compress(b'["zipped"]'),
    }
    answers = {
        coding: http(base, "POST", "/greeter/hello", body, {"Content-Encoding": coding})
        for coding, body in encoded.items()
    }
    assert answers == {
        "identity": (200, "Hello, plain!"),
        "deflate": (200, "Hello, deflated!"),
        "gzip": (200, "Hello, zipped!"),
    }


def test_what_aiohttp_cannot_parse_is_answered_in_json(base):
    post_head = b"POST /greeter/hello HTTP/1.1\r\nHost: gw\r\n"
    cases = {
        "bad request line": b"GARBAGE\r\n\r\n",
        "bad method": b"G@T / HTTP/1.1\r\nHost: gw\r\n\r\n",
        "bad version": b"GET / HTTP/9.9\r\nHost: gw\r\n\r\n",
        "non-ASCII path": "GET /gré HTTP/1.1\r\nHost: gw\r\n\r\n".encode(),
        "raw byte in path": b"GET /gr\xffeter/hello HTTP/1.1\r\nHost: gw\r\n\r\n",
        "oversized header": b"GET / HTTP/1.1\r\nHost: gw\r\nX-Big: "
        + b"a" * 10_000
        + b"\r\n\r\n",
        "oversized request line": b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n",
        "too many headers": b"GET / HTTP/1.1\r\n"
        + b"".join(b"X-%d: 1\r\n" % n for n in range(200))
        + b"\r\n",
        "bad chunk size": post_head
        + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        "chunk longer than said": post_head
        + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n",
        "bad Content-Length": post_head + b"Content-Length: abc\r\n\r\n",
    }
    for name, request in cases.items():
        status, error_type, _ = raw(base, request)
        assert (status, error_type) == (400, "MalformedRequestError"), name
    # A chunked body broken after its headers were taken: the handler is reading
    # the body (it answered the Expect header) when the broken chunk comes.
    with connect(base) as sock:
        sock.sendall(
            post_head + b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
        )
        status, _, _ = read_response(sock)
        assert status == 100
        sock.sendall(b'5\r\n["x"]\r\nzz\r\n')
        status, headers, body = read_response(sock)
    assert (status, json_error_of(status, headers, body)) == (
        400,
        "MalformedRequestError",
    )
    # Percent-encoded, the same path reaches routing: no such service.
    assert post(base, "/gr%C3%A9eter/hello", {})[0] == 404
    assert post(base, "/greeter/hello", ["still here"]) == (200, "Hello, still here!")


def test_slow_or_silent_clients_are_closed(base, module_broker_url):
    with gateway(
        module_broker_url, "--header-timeout", "0.5", "--idle-timeout", "1"
    ) as slow:
        # Slowloris: part of a request line, then nothing. A 408, then closed.
        with connect(slow) as sock:
            sock.sendall(b"GET /hea")
            status, headers, body = read_response(sock)
            assert (status, json_error_of(status, headers, body)) == (
                408,
                "RequestTimeoutError",
            )
            assert read_to_end(sock) == b""
        # A client that trickles a byte at a time is closed all the same: the
        # timeout is for the whole header, not between bytes.
        with connect(slow) as sock:
            request = b"GET /health HTTP/1.1\r\nHost: gw\r\nX-Pad: " + b"a" * 500
            answer = b""
            for byte in request:
                readable, _, _ = select.select([sock], [], [], 0.05)
                if readable:
                    answer = read_to_end(sock)
                    break
                try:
                    sock.sendall(bytes([byte]))
                except (BrokenPipeError, ConnectionResetError):
                    break
            else:
                pytest.fail("the gateway kept reading headers for 25 s")
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer
        # A connection that never sends anything is closed without a word.
        with connect(slow) as sock:
            assert read_to_end(sock) == b""
        # Keep-alive: served, then closed once idle.
        with connect(slow) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            status, headers, body = read_response(sock)
            assert (status, json.loads(body)["status"]) == (200, "ok")
            assert headers.get("connection", "").lower() != "close"
            assert read_to_end(sock) == b""
        assert http(slow, "GET", "/health")[0] == 200


def health_on_new_connection(base: str) -> int:
    with connect(base) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        return read_response(sock)[0]


def test_connections_past_the_cap_get_503_and_are_closed(base, module_broker_url):
    with (
        gateway(module_broker_url, "--max-connections", "3") as capped,
        ExitStack() as held,
    ):
        wait_for(
            lambda: health_on_new_connection(capped) == 200,
            30,
            "the start-up check's connection to be gone",
        )
        # Three keep-alive connections, each answered once and kept open.
        idle = [held.enter_context(connect(capped)) for _ in range(3)]
        for sock in idle:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
            assert read_response(sock)[0] == 200
        # The fourth is answered 503 before it says anything, then closed.
        with connect(capped) as sock:
            status, headers, body = read_response(sock)
            assert (status, json_error_of(status, headers, body)) == (
                503,
                "TooManyConnectionsError",
            )
            assert headers["retry-after"] == "1"
            assert read_to_end(sock) == b""
        # A client that sends its request first reads the same answer.
        assert health_on_new_connection(capped) == 503
        status, body = http(capped, "GET", "/health")
        assert (status, body["error"]["type"]) == (503, "TooManyConnectionsError")
        # The connections held are still served.
        idle[0].sendall(b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_response(idle[0])[0] == 200
        # Once one of them closes, a new connection is served again.
        idle.pop().close()
        wait_for(
            lambda: health_on_new_connection(capped) == 200,
            30,
            "a connection to be served once below the cap",
        )
