"""AsyncClusterProxy, no broker: futures settled from another thread; discovery."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import threading
import time

import orjson
import pytest

from rpc import (
    AsyncClusterProxy,
    AsyncRpcFuture,
    BrokerError,
    CallTimeoutError,
    Config,
    RemoteError,
)
from rpc.discovery import DiscoveryAnswers
from rpc.transport import Delivery
from services.compute import Compute
from services.greeter import Greeter
from tests.behaviour import RecordingSends


def reply(correlation_id: str, body: object) -> Delivery:
    return Delivery(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={},
        correlation_id=correlation_id,
        reply_to=None,
        delivery_tag=1,
        redelivered=False,
        routing_key="",
        exchange="",
        consumer_tag="",
        generation=1,
        properties={},
    )


def pending_call(cluster: AsyncClusterProxy, seconds: float = 30) -> AsyncRpcFuture:
    """A call built and registered as ``call_async`` does, and never published."""
    call = cluster._calls.request("svc", "method", (), None, seconds)
    future = AsyncRpcFuture(
        cluster,
        asyncio.get_running_loop(),
        "svc",
        "method",
        call.correlation_id,
        call.deadline,
        observed=call.observed,
    )
    cluster._pending.add(call, future, idempotent=False)
    assert len(cluster._pending) == 1
    return future


def on_io_thread(function, *args) -> None:
    thread = threading.Thread(target=function, args=args)
    thread.start()
    thread.join(timeout=10)


@pytest.fixture
def cluster() -> AsyncClusterProxy:
    # Never started: replies are handed to its pending calls by the test.
    return AsyncClusterProxy(config=Config(broker_url="memory://"))


def test_a_reply_from_the_io_thread_resolves_the_awaiting_task(cluster):
    async def scenario():
        future = pending_call(cluster)
        on_io_thread(
            cluster._pending.on_reply,
            reply(future.correlation_id, {"result": [1, 2], "error": None}),
        )
        return await future

    assert asyncio.run(scenario()) == [1, 2]
    assert len(cluster._pending) == 0


def test_an_error_reply_raises_the_remote_error(cluster):
    async def scenario():
        future = pending_call(cluster)
        error = {"type": "KeyError", "message": "'k'", "traceback": "tb"}
        on_io_thread(
            cluster._pending.on_reply,
            reply(future.correlation_id, {"result": None, "error": error}),
        )
        with pytest.raises(RemoteError) as caught:
            await future
        return caught.value

    error = asyncio.run(scenario())
    assert (error.exc_type, error.message, error.service) == ("KeyError", "'k'", "svc")


def test_cancelling_the_awaiting_task_forgets_the_call(cluster):
    async def scenario():
        future = pending_call(cluster)
        task = asyncio.ensure_future(future.result())
        await asyncio.sleep(0)  # let the task start waiting
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        pending = len(cluster._pending)
        # The late reply finds nobody and is dropped without a failure.
        on_io_thread(
            cluster._pending.on_reply,
            reply(future.correlation_id, {"result": 1, "error": None}),
        )
        await asyncio.sleep(0)
        return pending

    assert asyncio.run(scenario()) == 0
    assert len(cluster._pending) == 0


def test_the_deadline_raises_call_timeout_and_forgets_the_call(cluster):
    async def scenario():
        future = pending_call(cluster, seconds=0.2)
        with pytest.raises(CallTimeoutError, match="no reply before its deadline"):
            await future

    asyncio.run(scenario())
    assert len(cluster._pending) == 0


def test_expiry_on_the_io_thread_fails_the_call_at_once(cluster):
    async def scenario():
        future = pending_call(cluster, seconds=0.3)
        time.sleep(0.4)  # blocks the loop: only the I/O thread's expiry can fail it
        on_io_thread(cluster._pending.expire)
        await asyncio.sleep(0)  # run the callback the I/O thread scheduled
        assert future.done()
        with pytest.raises(CallTimeoutError):
            await future

    asyncio.run(scenario())
    assert len(cluster._pending) == 0


def test_a_reply_after_the_loop_closed_is_ignored(cluster):
    async def scenario():
        return pending_call(cluster)

    future = asyncio.run(scenario())  # the loop is closed when run() returns
    cluster._pending.on_reply(
        reply(future.correlation_id, {"result": 1, "error": None})
    )
    assert not future.done()


def test_after_hooks_see_a_timeout_or_a_cancelled_wait_once():
    sends = RecordingSends()
    cluster = AsyncClusterProxy(
        config=Config(broker_url="memory://"), middleware=[sends]
    )

    async def scenario():
        late = pending_call(cluster, seconds=0.2)
        with pytest.raises(CallTimeoutError):
            await late
        dropped = pending_call(cluster)
        task = asyncio.ensure_future(dropped.result())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for future in (late, dropped):  # late replies find nobody
            cluster._pending.on_reply(
                reply(future.correlation_id, {"result": 1, "error": None})
            )
        answered = pending_call(cluster)
        on_io_thread(
            cluster._pending.on_reply,
            reply(answered.correlation_id, {"result": 2, "error": None}),
        )
        return await answered

    assert asyncio.run(scenario()) == 2
    assert sends.outcomes(3) == [
        ("call svc.method", CallTimeoutError),
        ("call svc.method", concurrent.futures.CancelledError),
        ("call svc.method", 2),
    ]


def test_a_call_whose_publish_fails_leaves_no_exception_unretrieved(rpc_cluster):
    rpc_cluster.start(Greeter)

    async def scenario() -> list[dict[str, object]]:
        loop = asyncio.get_running_loop()
        unhandled: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _, context: unhandled.append(context))
        async with AsyncClusterProxy(config=rpc_cluster.config) as cluster:
            await cluster.greeter.hello("ada")  # connected, and the path warmed up

            def lost(*args, **kwargs):
                # As a broken link does: the I/O thread fails the calls in flight,
                # and the publish raises.
                on_io_thread(cluster._pending.connection_lost, OSError("reset"))
                raise BrokerError("broker connection failed: reset")

            cluster._connection.publish = lost
            calls = (
                cluster.call("greeter", "hello", ["ada"]),
                cluster.call_async("greeter", "hello", ["ada"]),
                cluster.greeter.hello("ada"),
                cluster.greeter.hello.call_async("ada"),
            )
            for call in calls:
                with pytest.raises(BrokerError):
                    await call
            await asyncio.sleep(0)  # run what the I/O thread scheduled on the loop
            gc.collect()  # an exception never retrieved is reported on collection
            del cluster._connection.publish
        return unhandled

    assert asyncio.run(scenario()) == []


# -- discovery -----------------------------------------------------------------------


def answer(worker: str) -> dict[str, object]:
    return {"worker": worker, "services": []}


def test_discovery_waits_the_bound_while_nobody_answers():
    answers = DiscoveryAnswers(frozenset(), started=100.0, wait=5.0, quiet=0.1)
    assert answers.done_at() == 105.0


def test_discovery_stops_once_answers_stop_arriving():
    answers = DiscoveryAnswers(frozenset(), started=100.0, wait=5.0, quiet=0.1)
    answers.add(answer("a"), 100.01)
    assert answers.done_at() == pytest.approx(100.11)
    answers.add(answer("b"), 100.05)
    assert answers.done_at() == pytest.approx(100.15)
    answers.add(answer("c"), 104.95)
    assert answers.done_at() == 105.0  # never past the bound
    assert answers.workers == {"a", "b", "c"}


def test_discovery_waits_for_every_worker_that_answered_last_time():
    answers = DiscoveryAnswers(frozenset({"a", "b"}), started=0.0, wait=5.0, quiet=0.1)
    answers.add(answer("a"), 0.01)
    assert answers.done_at() == 5.0  # b may be slow: keep listening
    answers.add("not a discovery answer", 0.02)
    assert answers.done_at() == 5.0
    answers.add(answer("b"), 0.3)
    assert answers.done_at() == pytest.approx(0.4)
    assert len(answers.replies) == 3


def test_discover_returns_once_every_worker_answered(rpc_cluster):
    for _ in range(3):
        rpc_cluster.start(Greeter)
    rpc_cluster.start(Compute)

    async def scenario() -> list[dict[str, object]]:
        async with AsyncClusterProxy(config=rpc_cluster.config) as cluster:
            # An upper bound far beyond the test's timeout: only answers end these.
            listings = [await asyncio.wait_for(cluster.discover(wait=600), 60)]
            listings.append(await asyncio.wait_for(cluster.discover(wait=600), 60))
            rpc_cluster.runners[0].stop()
            # A worker known from before is missing: this one waits the bound...
            listings.append(await cluster.discover(wait=0.5))
            # ...and the next one no longer waits for it.
            listings.append(await asyncio.wait_for(cluster.discover(wait=600), 60))
            return listings

    first, second, after_stop, last = asyncio.run(scenario())
    assert first == second
    assert first["greeter"]["workers"] == 3
    assert first["compute"]["workers"] == 1
    assert after_stop["greeter"]["workers"] == last["greeter"]["workers"] == 2
