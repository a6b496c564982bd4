"""asyncio handlers in the worker and the asyncio client, against the real RabbitMQ."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import pytest

from rpc import (
    AsyncClusterProxy,
    BrokerError,
    CallTimeoutError,
    Config,
    InvalidArgumentsError,
    MethodNotFoundError,
    RemoteError,
    ServiceRunner,
    UnknownServiceError,
)
from tests.integration.async_services import AsyncEcho, AsyncEvents, AsyncRelay
from tests.integration.sample_services import Echo

CALLS = 3000


@pytest.fixture
def config(broker_url: str) -> Config:
    return Config(broker_url=broker_url, default_timeout=60, max_workers=1)


@pytest.fixture
def services(config: Config) -> Iterator[ServiceRunner]:
    runner = ServiceRunner([AsyncEcho, AsyncRelay, Echo], config)
    runner.start()
    yield runner
    runner.stop()


def run(coroutine_function, config: Config, timeout: float = 90):
    """Run ``coroutine_function(cluster)`` in a fresh loop with a connected client."""

    async def main():
        async with AsyncClusterProxy(config=config) as cluster:
            return await asyncio.wait_for(coroutine_function(cluster), timeout)

    return asyncio.run(main())


def test_thousands_of_concurrent_calls_on_one_connection(services, config):
    async def calls(cluster):
        results = await asyncio.gather(
            *(cluster.aecho.echo(value=i) for i in range(CALLS))
        )
        return results, len(cluster._pending)

    results, pending = run(calls, config)
    assert results == list(range(CALLS))
    assert pending == 0


def test_threaded_handlers_answer_the_async_client_too(services, config):
    async def calls(cluster):
        return await asyncio.gather(*(cluster.echo.echo(i) for i in range(200)))

    assert run(calls, config) == list(range(200))


def test_a_slow_async_handler_does_not_block_others(services, config):
    # max_workers=1: if handlers took pool threads, the waiting call would hold the
    # only one and nothing else could run until it timed out.
    async def scenario(cluster):
        waiting = asyncio.ensure_future(
            cluster.aecho.wait_for_gate(key="g", seconds=45)
        )
        # Calls that run while the first one waits, async and threaded alike.
        assert await cluster.aecho.echo("meanwhile") == "meanwhile"
        assert await cluster.echo.echo("threaded") == "threaded"
        assert not waiting.done()
        await cluster.aecho.open_gate(key="g")
        return await waiting

    assert run(scenario, config) is True


def test_async_and_plain_methods_of_one_service_run_where_they_belong(services, config):
    async def scenario(cluster):
        return await cluster.aecho.thread(), await cluster.aecho.sync_thread()

    loop_thread, pool_thread = run(scenario, config)
    assert loop_thread.startswith("rpc-loop-")
    assert pool_thread.startswith("rpc-handler")


def test_prefetch_counts_async_slots_only_when_a_handler_is_async():
    config = Config(max_workers=3, max_async=7)
    assert ServiceRunner([AsyncEcho], config).prefetch == 3 + 7
    assert ServiceRunner([AsyncRelay, Echo], config).prefetch == 3 + 7
    assert ServiceRunner([Echo], config).prefetch == 3


def test_async_handler_awaits_other_services_through_its_proxy(services, config):
    async def scenario(cluster):
        return await cluster.arelay.relay_many([1, "two", None, {"x": 3}])

    assert run(scenario, config) == [1, "two", None, {"x": 3}]


def test_plain_handler_of_the_same_service_gets_the_threaded_proxy(services, config):
    async def scenario(cluster):
        return await cluster.arelay.sync_relay("plain")

    assert run(scenario, config) == "plain"


def test_deadline_propagates_through_async_handlers(services, config):
    async def scenario(cluster):
        return await cluster.arelay.nested_remaining.with_options(timeout=5)()

    outer, inner = run(scenario, config)
    assert 0 < outer <= 5
    assert 0 < inner <= outer


def test_concurrent_async_handlers_each_keep_their_own_deadline(services, config):
    # The handlers interleave on one loop; each task must see only its own context.
    async def scenario(cluster):
        method = cluster.arelay.nested_remaining
        return await asyncio.gather(
            *(method.with_options(timeout=t)() for t in [5, 50, 5, 50, 5, 50])
        )

    for (outer, inner), timeout in zip(run(scenario, config), [5, 50] * 3, strict=True):
        assert timeout - 5 < outer <= timeout
        assert timeout - 5 < inner <= outer


def test_errors_of_async_handlers_reach_the_caller(services, config):
    async def scenario(cluster):
        with pytest.raises(RemoteError) as caught:
            await cluster.aecho.fail("boom")
        assert caught.value.exc_type == "ValueError"
        assert caught.value.message == "boom"
        assert "raise ValueError(message)" in caught.value.traceback
        with pytest.raises(MethodNotFoundError):
            await cluster.aecho.missing()
        with pytest.raises(InvalidArgumentsError):
            await cluster.aecho.echo()
        with pytest.raises(UnknownServiceError):
            await cluster.nobody.echo(1)
        return await cluster.aecho.echo("still serving")

    assert run(scenario, config) == "still serving"


def test_timeout_raises_and_leaves_nothing_pending(services, config):
    async def scenario(cluster):
        with pytest.raises(CallTimeoutError):
            await cluster.aecho.sleep.with_options(timeout=0.5)(seconds=3)
        return len(cluster._pending)

    assert run(scenario, config) == 0


def test_cancelled_caller_leaves_no_state(services, config):
    async def scenario(cluster):
        tasks = [
            asyncio.ensure_future(cluster.aecho.wait_for_gate(key=f"c{i}", seconds=30))
            for i in range(50)
        ]
        # Wait until every request is out and registered, then cancel the callers.
        for _ in range(500):
            if len(cluster._pending) == 50:
                break
            await asyncio.sleep(0.01)
        assert len(cluster._pending) == 50
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        pending_after_cancel = len(cluster._pending)
        # The handlers still finish; their late replies are dropped, not matched.
        await asyncio.gather(*(cluster.aecho.open_gate(key=f"c{i}") for i in range(50)))
        return pending_after_cancel, await cluster.aecho.echo("after"), cluster

    pending, after, cluster = run(scenario, config)
    assert pending == 0
    assert after == "after"
    assert len(cluster._pending) == 0 and cluster._pending.listening == 0


def test_call_async_returns_an_awaitable_future(services, config):
    async def scenario(cluster):
        futures = [await cluster.aecho.echo.call_async(i) for i in range(10)]
        return [await future for future in futures]

    assert run(scenario, config) == list(range(10))


def test_discovery_lists_running_services_with_signatures(services, config):
    async def scenario(cluster):
        return await cluster.discover(wait=1.0)

    listing = run(scenario, config)
    assert set(listing) == {"aecho", "arelay", "echo"}
    echo = listing["aecho"]["methods"]["wait_for_gate"]
    assert echo["signature"] == "(key: 'str', seconds: 'float') -> 'bool'"
    assert echo["doc"].startswith("Wait until another call opens gate")
    assert listing["arelay"]["workers"] == 1


def test_stop_waits_for_async_handlers_in_flight(config):
    runner = ServiceRunner([AsyncEcho], config)
    runner.start()
    try:

        async def scenario(cluster):
            future = await cluster.aecho.sleep.call_async(1.0)
            for _ in range(500):
                if runner.in_flight:
                    break
                await asyncio.sleep(0.01)
            stopping = asyncio.get_running_loop().run_in_executor(None, runner.stop)
            result = await future
            await stopping
            return result

        assert run(scenario, config) == 1.0
    finally:
        runner.stop()


def test_async_client_casts_and_async_handlers_dispatch_and_handle_events(config):
    runner = ServiceRunner([AsyncEvents], config)
    runner.start()
    seen = AsyncEvents.seen
    try:

        async def scenario(cluster):
            await cluster.aevents.record.cast("cast-value")
            await cluster.cast("aevents", "record", kwargs={"value": 2})
            await cluster.aevents.announce("from-a-handler")
            await cluster.dispatch("aevents", "announced", "from-the-client")
            with pytest.raises(UnknownServiceError):
                await cluster.nobody.record.cast(1)

        run(scenario, config)
        got = [seen.get(timeout=30) for _ in range(4)]
    finally:
        runner.stop()
    records = [value for kind, value in got if kind == "record"]
    assert len(records) == 2
    assert set(records) == {2, "cast-value"}
    events = sorted(value[0] for kind, value in got if kind == "on_announced")
    assert events == ["from-a-handler", "from-the-client"]
    threads = {value[1] for kind, value in got if kind == "on_announced"}
    assert all(name.startswith("rpc-loop-") for name in threads)


def test_unreachable_broker_raises_broker_error_not_a_hang():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    config = Config(
        broker_url=f"amqp://guest:guest@127.0.0.1:{port}//", connect_timeout=1
    )

    async def scenario():
        cluster = AsyncClusterProxy(config=config)
        with pytest.raises(BrokerError):
            await cluster.start()
        with pytest.raises(BrokerError):
            await cluster.greeter.hello("x")
        assert not cluster.connected
        assert len(cluster._pending) == 0

    asyncio.run(asyncio.wait_for(scenario(), 60))
