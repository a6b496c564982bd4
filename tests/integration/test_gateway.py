"""The HTTP gateway as a user runs it: `rpc gateway`, `rpc run` daemons, real broker."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

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
def gateway(broker_url: str, *args: str, **env: str) -> Iterator[str]:
    """Run `rpc gateway` on a free loopback port; yield its base URL once it answers."""
    port = free_port()
    process = subprocess.Popen(
        rpc_command("gateway", "--port", str(port), *args),
        cwd=PROJECT_ROOT,
        env=project_env(broker_url, **env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode()  # type: ignore[union-attr]
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
