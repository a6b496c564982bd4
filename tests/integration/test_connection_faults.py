"""A caller's or a worker's connection fails: cut (RST) or dead without FIN.

The TCP proxy stands between one side and the shared broker, so only that side's
connection fails. Calls in flight must fail at once with BrokerError (their replies
die with the connection) or, when idempotent, be sent again; a silent dead connection
is found by AMQP heartbeats; both sides reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from rpc import AsyncClusterProxy, BrokerError, ClusterProxy, Config, ServiceRunner
from tests.integration import fixtures
from tests.integration.faults import TcpProxy, wait_for
from tests.integration.fixtures import tokens
from tests.integration.ledger_service import Ledger

# py-amqp drops the socket of a connection attempt whose handshake timed out (into
# the black hole) without closing it; the garbage collector closes it, warning.
pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


@pytest.fixture(autouse=True)
def collect_abandoned_sockets() -> Iterator[None]:
    yield
    gc.collect()  # here, while ResourceWarning is ignored, not in a later test


#: Longer than any test runs: a call that fails must not be failing by timeout.
LONG = 120.0


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=LONG, max_workers=12)


# Shared fixture: Ledger in this process, on this module's config.
runner = fixtures.runner


@pytest.fixture
def proxied_cluster(config: Config, tcp_proxy: TcpProxy) -> Iterator[ClusterProxy]:
    """A caller whose connection goes through the fault-injecting proxy."""
    proxied = config.replace(broker_url=tcp_proxy.url_for(config.broker_url))
    with ClusterProxy(config=proxied) as cluster:
        yield cluster


def test_calls_in_flight_fail_at_once_when_the_callers_connection_is_cut(
    runner, proxied_cluster, tcp_proxy
):
    names = tokens(4)
    futures = [proxied_cluster.ledger.record.call_async(t, seconds=1) for t in names]
    wait_for(lambda: all(Ledger.count(t) for t in names), 30, "handlers to start")

    tcp_proxy.cut()

    for future in futures:
        # Without the fail-fast on disconnect this would wait out the 120 s deadline
        # (and the 30 s below would raise the builtin TimeoutError instead).
        with pytest.raises(BrokerError, match="lost while the call was in flight"):
            future.result(timeout=30)
    # Not retried: the method is not idempotent.
    assert [Ledger.count(t) for t in names] == [1] * 4
    # The proxy reconnected by itself.
    again = uuid.uuid4().hex
    assert proxied_cluster.ledger.record(again) == again


def test_idempotent_calls_are_sent_again_after_a_cut(
    runner, proxied_cluster, tcp_proxy
):
    # The first reply teaches the proxy that lookup is @rpc(idempotent=True).
    first = uuid.uuid4().hex
    assert proxied_cluster.ledger.lookup(first)["redelivered"] is False
    names = tokens(4)
    futures = [proxied_cluster.ledger.lookup.call_async(t, seconds=1) for t in names]
    wait_for(lambda: all(Ledger.count(t) for t in names), 30, "handlers to start")

    tcp_proxy.cut()

    results = [future.result(timeout=60) for future in futures]
    assert [r["token"] for r in results] == names
    # Each answer came from a second run that knew it was a retry.
    assert all(r["redelivered"] for r in results)
    assert all(Ledger.count(t) == 2 for t in names)


def test_call_options_override_what_the_service_declares(
    runner, proxied_cluster, tcp_proxy
):
    ledger = proxied_cluster.ledger
    ledger.lookup(uuid.uuid4().hex)  # learnt: idempotent
    retried, not_retried = tokens(2)
    forced = ledger.record.with_options(idempotent=True).call_async(retried, seconds=1)
    refused = ledger.lookup.with_options(idempotent=False).call_async(
        not_retried, seconds=1
    )
    wait_for(
        lambda: Ledger.count(retried) and Ledger.count(not_retried),
        30,
        "handlers to start",
    )

    tcp_proxy.cut()

    assert forced.result(timeout=60) == retried
    with pytest.raises(BrokerError):
        refused.result(timeout=30)
    assert Ledger.count(retried) == 2
    assert Ledger.count(not_retried) == 1


def test_the_asyncio_client_resends_idempotent_calls_and_fails_the_others(
    runner, config, tcp_proxy
):
    proxied = config.replace(broker_url=tcp_proxy.url_for(config.broker_url))
    retried, failed = tokens(2)

    async def scenario() -> tuple[object, BaseException | None]:
        async with AsyncClusterProxy(config=proxied) as cluster:
            await cluster.ledger.lookup(uuid.uuid4().hex)  # learnt: idempotent
            lookup = asyncio.ensure_future(cluster.ledger.lookup(retried, seconds=1))
            record = asyncio.ensure_future(cluster.ledger.record(failed, seconds=1))
            for _ in range(600):  # up to 30 s for both handlers to start
                if Ledger.count(retried) and Ledger.count(failed):
                    break
                await asyncio.sleep(0.05)
            tcp_proxy.cut()
            error = None
            try:
                await asyncio.wait_for(record, 30)
            except BrokerError as exc:
                error = exc
            return await asyncio.wait_for(lookup, 60), error

    result, error = asyncio.run(scenario())
    assert result == {"token": retried, "redelivered": True}
    assert isinstance(error, BrokerError)
    assert (Ledger.count(retried), Ledger.count(failed)) == (2, 1)


def test_asyncio_calls_waiting_for_a_reconnection_hold_no_executor_thread(
    runner, config, tcp_proxy
):
    # Calls made while the connection is down wait for it (up to connect_timeout).
    # They must wait on the loop: the default executor has few threads, and
    # anything else the application runs there would queue behind them.
    proxied = config.replace(
        broker_url=tcp_proxy.url_for(config.broker_url), connect_timeout=8
    )

    async def scenario() -> tuple[str, list[object]]:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=2))
        async with AsyncClusterProxy(config=proxied) as cluster:
            await cluster.ledger.lookup(uuid.uuid4().hex)
            tcp_proxy.blackhole()  # reconnection attempts hang from now on
            tcp_proxy.cut()
            for _ in range(600):  # up to 30 s to notice the cut
                if not cluster.connected:
                    break
                await asyncio.sleep(0.05)
            calls = [
                asyncio.ensure_future(cluster.ledger.record(token))
                for token in tokens(10)
            ]
            await asyncio.sleep(0.2)  # every call is waiting for the connection
            # Far less than connect_timeout: only a free executor thread answers.
            probe = await asyncio.wait_for(
                loop.run_in_executor(None, lambda: "free"), 4
            )
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            tcp_proxy.restore()
            return probe, outcomes

    probe, outcomes = asyncio.run(scenario())
    assert probe == "free"
    assert all(isinstance(outcome, BrokerError) for outcome in outcomes), outcomes


def test_heartbeats_find_a_callers_dead_connection(runner, config, tcp_proxy):
    proxied = config.replace(broker_url=tcp_proxy.url_for(config.broker_url))
    with ClusterProxy(config=proxied.replace(heartbeat=2)) as cluster:
        token = uuid.uuid4().hex
        future = cluster.ledger.record.call_async(token, seconds=0.5)
        wait_for(lambda: Ledger.count(token), 30, "the handler to start")

        tcp_proxy.blackhole()  # no RST, no FIN: only heartbeats can tell
        started = time.monotonic()
        with pytest.raises(BrokerError):
            # heartbeat=2 s: missing two of them (4 s) declares the peer dead.
            future.result(timeout=30)
        detected_after = time.monotonic() - started

        tcp_proxy.restore()
        again = uuid.uuid4().hex
        assert cluster.ledger.record(again) == again
    print(f"dead caller connection detected after {detected_after:.1f}s")


def test_heartbeats_find_a_workers_dead_connection(broker_url, config, tcp_proxy):
    proxied = config.replace(
        broker_url=tcp_proxy.url_for(broker_url), heartbeat=2, max_workers=2
    )
    runner = ServiceRunner([Ledger], proxied)
    runner.start()
    try:
        with ClusterProxy(config=config) as cluster:
            assert cluster.ledger.record("warm-up") == "warm-up"

            tcp_proxy.blackhole()
            started = time.monotonic()
            wait_for(
                lambda: not runner.connected, 30, "the worker to see it is cut off"
            )
            detected_after = time.monotonic() - started
            # A call made meanwhile waits in the queue (or is requeued by the broker
            # once it drops the dead consumer) and runs after the worker is back.
            token = uuid.uuid4().hex
            future = cluster.ledger.record.call_async(token)

            tcp_proxy.restore()
            wait_for(lambda: runner.connected, 60, "the worker to reconnect")
            assert future.result(timeout=60) == token
            assert Ledger.count(token) >= 1
    finally:
        runner.stop()
    print(f"dead worker connection detected after {detected_after:.1f}s")


def test_publishing_on_a_dead_socket_fails_instead_of_blocking(config, tcp_proxy):
    # Heartbeats off: only the socket write timeout can end a blocked publish.
    proxied = config.replace(
        broker_url=tcp_proxy.url_for(config.broker_url), heartbeat=0
    )
    outcome: list[BaseException] = []
    with ClusterProxy(config=proxied) as cluster:
        cluster.start()
        tcp_proxy.blackhole()
        payload = "x" * 1_000_000

        def flood() -> None:
            # The socket buffers fill within a few dozen megabytes, then a write
            # blocks until the write timeout gives up.
            try:
                for _ in range(200):
                    cluster.nobody.store.with_options(idempotent=False).call_async(
                        payload
                    )
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        thread.join(timeout=90)
        assert not thread.is_alive(), "a publish blocked on the dead socket"
        assert outcome and isinstance(outcome[0], BrokerError), outcome
        tcp_proxy.restore()


@pytest.mark.parametrize("fault", ["cut", "blackhole"])
def test_stop_returns_while_the_connection_is_down(config, tcp_proxy, fault):
    proxied = config.replace(
        broker_url=tcp_proxy.url_for(config.broker_url), heartbeat=2
    )
    runner = ServiceRunner([Ledger], proxied)
    cluster = ClusterProxy(config=proxied)
    runner.start()
    cluster.start()
    getattr(tcp_proxy, fault)()
    if fault == "cut":
        # Keep it down: further connections are silent too.
        tcp_proxy.blackhole()
    stopped: list[str] = []

    def stop_both() -> None:
        runner.stop()
        stopped.append("runner")
        cluster.stop()
        stopped.append("cluster")

    thread = threading.Thread(target=stop_both, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert stopped == ["runner", "cluster"]


def test_an_unconfirmed_cast_says_how_long_it_waited(config, tcp_proxy):
    proxied = config.replace(broker_url=tcp_proxy.url_for(config.broker_url))
    with ClusterProxy(config=proxied) as cluster:
        cluster.start()
        tcp_proxy.blackhole()  # the publish goes out; no confirm comes back
        try:
            with pytest.raises(BrokerError, match=r"within 1\.5s"):
                cluster.cast("ledger", "record", ["lost"], timeout=1.5)
        finally:
            tcp_proxy.restore()


def test_a_link_that_dies_inside_a_frame_is_found_dead(runner, config, tcp_proxy):
    # Heartbeats off: the socket read timeout alone must end a read that waits
    # for the rest of a frame that never comes. Nobody else could notice: the
    # reader holds the connection's lock meanwhile.
    proxied = config.replace(
        broker_url=tcp_proxy.url_for(config.broker_url), heartbeat=0
    )
    with ClusterProxy(config=proxied) as cluster:
        assert cluster.ledger.record("warm-up") == "warm-up"
        # The reply's frame header (7 bytes) and the start of its payload.
        tcp_proxy.blackhole_after(10)
        try:
            future = cluster.ledger.record.call_async(uuid.uuid4().hex)
            # Not future.result(): this thread would be the reader that hangs.
            wait_for(future.done, 60, "the call to fail with its dead link")
        finally:
            tcp_proxy.restore()  # a reset ends a read that still waits
        with pytest.raises(BrokerError):
            future.result()
        again = uuid.uuid4().hex
        assert cluster.ledger.record.call_async(again).result(timeout=60) == again
