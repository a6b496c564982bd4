"""A broker given as a list of nodes: every node tried, from a random one, each briefly.

The "nodes" here are loopback TCP proxies in front of the shared broker, so a test
can refuse, cut or black-hole one of them (a frozen node: TCP accepted, nothing
answered) while the others stay up. tests/integration/test_cluster_links.py does
the same against a real cluster.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from rpc import AsyncClusterProxy, BrokerError, ClusterProxy, Config, ServiceRunner
from rpc.local_cluster import free_port
from services.greeter import Greeter
from tests.integration import fixtures
from tests.integration.faults import TcpProxy, wait_for
from tests.integration.ledger_service import Ledger

# py-amqp drops the socket of a handshake that timed out (into a black hole)
# without closing it; the garbage collector closes it, warning.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

NODE_TIMEOUT = 1.0


@pytest.fixture(autouse=True)
def collect_abandoned_sockets() -> Iterator[None]:
    yield
    gc.collect()


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(
        broker_url=broker_url,
        default_timeout=30,
        connect_timeout=10,
        node_connect_timeout=NODE_TIMEOUT,
        heartbeat=2,
    )


runner = fixtures.runner


@pytest.fixture
def nodes(base_broker_url: str) -> Iterator[list[TcpProxy]]:
    """Three ways to the shared broker, each of which can fail on its own."""
    parts = urlsplit(base_broker_url)
    target = (parts.hostname or "localhost", parts.port or 5672)
    proxies = [TcpProxy(target).start() for _ in range(3)]
    try:
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()


def node_list(urls: list[str]) -> str:
    return ";".join(urls)


def dead_url(broker_url: str) -> str:
    """A URL like ``broker_url`` at a port where nothing listens."""
    parts = urlsplit(broker_url)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{free_port()}"
    return urlunsplit(parts._replace(netloc=netloc))


def on(proxies: list[TcpProxy], node: str) -> TcpProxy:
    """The proxy a connection's ``node`` (its masked URL) goes through."""
    port = urlsplit(node).port
    return next(proxy for proxy in proxies if proxy.port == port)


def masked(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return url.replace(f":{parts.password}@", ":**@", 1)


def test_every_node_is_tried_so_two_dead_ones_first_do_not_matter(
    runner, config, broker_url
):
    # Kombu's own ';' failover gave up after the first two URLs.
    urls = node_list([dead_url(broker_url), dead_url(broker_url), broker_url])
    for _ in range(4):  # whichever node each proxy starts at
        with ClusterProxy(config=config.replace(broker_url=urls)) as cluster:
            token = uuid.uuid4().hex
            assert cluster.ledger.record(token) == token
            assert cluster._connection.node == masked(broker_url)


def test_processes_start_at_different_nodes(config, nodes, broker_url):
    urls = node_list([proxy.url_for(broker_url) for proxy in nodes])
    used = set()
    for _ in range(12):
        with ClusterProxy(config=config.replace(broker_url=urls)) as cluster:
            cluster._start_connection()
            used.add(cluster._connection.node)
    # 12 random starts over 3 nodes miss one with probability 3 * (2/3)**12 < 2.4%;
    # 2 of 3 is what matters: not every process on the first node.
    assert len(used) >= 2


def test_a_reconnection_moves_past_the_node_it_lost(runner, config, nodes, broker_url):
    urls = [proxy.url_for(broker_url) for proxy in nodes]
    with ClusterProxy(config=config.replace(broker_url=node_list(urls))) as cluster:
        assert cluster.ledger.record("first") == "first"
        for _ in range(3):
            lost = on(nodes, cluster._connection.node)
            generation = cluster._connection.generation
            lost.cut()
            wait_for(
                lambda g=generation: (
                    cluster._connection.generation > g and cluster.connected
                ),
                15,
                "the reconnection",
            )
            # The next node in the list, not the one that just failed.
            following = nodes[(nodes.index(lost) + 1) % len(nodes)]
            assert on(nodes, cluster._connection.node) is following
            token = uuid.uuid4().hex
            assert cluster.ledger.record(token) == token


def test_a_frozen_node_costs_one_node_timeout_at_start_up(config, nodes, broker_url):
    frozen = nodes[0]
    frozen.blackhole()  # accepts TCP, never answers the AMQP handshake
    urls = node_list([proxy.url_for(broker_url) for proxy in nodes])
    for _ in range(4):
        started = time.monotonic()
        with ClusterProxy(config=config.replace(broker_url=urls)) as cluster:
            cluster._start_connection()
            elapsed = time.monotonic() - started
            assert on(nodes, cluster._connection.node) is not frozen
        # Before, a frozen first node cost 5 s (and twice that after a retry).
        assert elapsed < NODE_TIMEOUT + 2.0


def test_calls_on_a_frozen_node_fail_within_two_heartbeats_then_go_elsewhere(
    runner, config, nodes, broker_url
):
    urls = [proxy.url_for(broker_url) for proxy in nodes]
    with ClusterProxy(config=config.replace(broker_url=node_list(urls))) as cluster:
        assert cluster.ledger.record("warm") == "warm"
        frozen = on(nodes, cluster._connection.node)
        token = uuid.uuid4().hex
        future = cluster.ledger.record.call_async(token, seconds=7)
        wait_for(lambda: Ledger.count(token), 10, "the handler to start")
        frozen.blackhole()
        started = time.monotonic()
        with pytest.raises(BrokerError, match="lost while the call was in flight"):
            future.result(timeout=30)
        # heartbeat 2 s: py-amqp gives up after two silent intervals, plus a tick.
        assert time.monotonic() - started < 2 * config.heartbeat + 2.0
        again = uuid.uuid4().hex
        assert cluster.ledger.record(again) == again
        assert on(nodes, cluster._connection.node) is not frozen


def test_errors_name_every_node_tried_and_mask_passwords(broker_url):
    secret = uuid.uuid4().hex
    urls = [f"amqp://guest:{secret}@127.0.0.1:{free_port()}//" for _ in range(3)]
    config = Config(broker_url=node_list(urls), connect_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(BrokerError) as raised:
        ClusterProxy(config=config)._start_connection()
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert secret not in message
    for url in urls:
        assert url.replace(secret, "**") in message


def test_a_worker_serves_through_a_list_and_logs_the_node_it_uses(
    config, broker_url, caplog
):
    urls = node_list([dead_url(broker_url), broker_url])
    caplog.set_level("INFO", logger="rpc")
    worker = ServiceRunner([Ledger], config.replace(broker_url=urls))
    worker.start()
    try:
        with ClusterProxy(config=config) as cluster:
            assert cluster.ledger.record("listed") == "listed"
    finally:
        worker.stop()
    serving = [r.getMessage() for r in caplog.records if "serving" in r.getMessage()]
    # The node in use, not the last of the list; no password.
    assert serving and f" on {masked(broker_url)} " in serving[0]


def test_the_async_proxy_takes_a_list_too(runner, config, broker_url):
    urls = node_list([dead_url(broker_url), dead_url(broker_url), broker_url])

    async def call() -> str:
        async with AsyncClusterProxy(config=config.replace(broker_url=urls)) as proxy:
            return await proxy.ledger.record("async")

    assert asyncio.run(call()) == "async"


def test_a_broker_that_is_down_is_skipped_for_the_next_in_the_list(broker_url):
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    config = Config(broker_url=f"{down};{broker_url}", connect_timeout=10)
    with ServiceRunner([Greeter], config), ClusterProxy(config=config) as cluster:
        assert cluster.greeter.hello("list") == "Hello, list!"
