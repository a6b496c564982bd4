"""The asyncio client reads its own replies on its event loop, with no thread hop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from rpc import AsyncClusterProxy, BrokerError, Config, ServiceRunner
from rpc.async_proxy import AsyncRpcFuture
from tests.integration.faults import TcpProxy, wait_for
from tests.integration.sample_services import Echo


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=60, max_workers=4)


@pytest.fixture
def services(config: Config) -> Iterator[ServiceRunner]:
    runner = ServiceRunner([Echo], config)
    runner.start()
    yield runner
    runner.stop()


@pytest.fixture
def settled_on_loop(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each reply settled, whether it was read on its caller's own loop."""
    on_loop: list[bool] = []
    settle = AsyncRpcFuture._settle

    def recording(self: AsyncRpcFuture, delivery: object, exc: object) -> None:
        on_loop.append(asyncio._get_running_loop() is self._loop)
        settle(self, delivery, exc)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncRpcFuture, "_settle", recording)
    return on_loop


def run(coroutine: object) -> object:
    return asyncio.run(asyncio.wait_for(coroutine, 60))  # type: ignore[arg-type]


def test_replies_of_awaiting_calls_are_read_on_their_loop(
    services, config, settled_on_loop
):
    async def calls() -> None:
        async with AsyncClusterProxy(config=config) as cluster:
            assert await cluster.echo.echo("warm-up") == "warm-up"
            for number in range(30):
                assert await cluster.echo.echo(number) == number
            numbers = list(range(32))
            assert await asyncio.gather(*map(cluster.echo.echo, numbers)) == numbers

    run(calls())
    # The I/O thread may read one now and then (a reply that came before the
    # loop took the socket), but not as a rule.
    assert sum(settled_on_loop) >= 50, settled_on_loop


def test_an_idle_loop_gives_the_reading_back(services, config):
    async def calls() -> None:
        async with AsyncClusterProxy(config=config) as cluster:
            assert await cluster.echo.echo(1) == 1
            reading = cluster._connection._reading
            wait = asyncio.get_running_loop().time() + 20
            while reading.lender is not None:
                assert asyncio.get_running_loop().time() < wait, "still borrowed"
                await asyncio.sleep(0.01)
            # The I/O thread reads again: a cast's confirm comes back.
            await cluster.echo.echo.cast(2)
            assert await cluster.echo.echo(3) == 3

    run(calls())


def test_a_cut_while_the_loop_reads_fails_the_call_and_reconnects(
    services, config, tcp_proxy: TcpProxy, settled_on_loop
):
    proxied = config.replace(broker_url=tcp_proxy.url_for(config.broker_url))

    async def calls() -> None:
        async with AsyncClusterProxy(config=proxied) as cluster:
            assert await cluster.echo.echo("warm-up") == "warm-up"
            slow = asyncio.ensure_future(cluster.echo.sleep(3))
            await asyncio.sleep(0.5)  # awaiting: the loop reads now
            assert cluster._connection._reading.lender is not None
            tcp_proxy.cut()
            with pytest.raises(BrokerError):
                await asyncio.wait_for(slow, 20)
            wait_for(lambda: cluster._connection.connected, 20, "reconnection")
            settled_on_loop.clear()
            for number in range(10):
                assert await cluster.echo.echo(number) == number
            assert sum(settled_on_loop) >= 8, settled_on_loop

    run(calls())


def test_stop_while_the_loop_reads_fails_what_awaits(services, config):
    async def calls() -> None:
        cluster = await AsyncClusterProxy(config=config).start()
        assert await cluster.echo.echo("warm-up") == "warm-up"
        slow = asyncio.ensure_future(cluster.echo.sleep(3))
        await asyncio.sleep(0.5)
        assert cluster._connection._reading.lender is not None
        await cluster.stop()
        with pytest.raises(BrokerError):
            await asyncio.wait_for(slow, 20)
        assert cluster._connection._reading.lender is None

    run(calls())


def test_loops_on_several_threads_share_one_proxy(services, config):
    cluster = AsyncClusterProxy(config=config)
    run(cluster.start())
    results: dict[int, list[object]] = {}

    async def calls(thread: int) -> None:
        results[thread] = [await cluster.echo.echo(n) for n in range(50)]

    threads = [
        threading.Thread(target=run, args=(calls(number),)) for number in range(3)
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        run(cluster.stop())
    assert results == {number: list(range(50)) for number in range(3)}


def test_a_loop_that_closed_while_reading_hands_the_socket_back(services, config):
    cluster = AsyncClusterProxy(config=config)
    run(cluster.start())
    try:

        async def abandon() -> None:
            # A call whose loop ends (asyncio.run returns) with the reply unread.
            assert await cluster.echo.echo("warm-up") == "warm-up"
            cluster._connection.loop_reader(asyncio.get_running_loop()).enter()

        run(abandon())
        reading = cluster._connection._reading
        wait_for(lambda: reading.lender is None, 20, "the reading handed back")
        assert run(cluster.echo.echo("after")) == "after"
    finally:
        run(cluster.stop())
