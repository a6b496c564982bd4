"""The asyncio futures of AsyncClusterProxy, settled from another thread, no broker."""

from __future__ import annotations

import asyncio
import threading
import time

import orjson
import pytest

from rpc import AsyncClusterProxy, AsyncRpcFuture, CallTimeoutError, Config, RemoteError
from rpc.transport import Delivery


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
    """A call made as ``call_async`` makes it; the fixture's publish goes nowhere."""
    call = cluster._prepare("svc", "method", (), None, seconds)
    future = AsyncRpcFuture(
        cluster,
        asyncio.get_running_loop(),
        "svc",
        "method",
        call.correlation_id,
        call.deadline,
    )
    cluster._send(call, future, idempotent=False)
    assert cluster._pending
    return future


def on_io_thread(function, *args) -> None:
    thread = threading.Thread(target=function, args=args)
    thread.start()
    thread.join(timeout=10)


@pytest.fixture
def cluster() -> AsyncClusterProxy:
    proxy = AsyncClusterProxy(config=Config(broker_url="memory://"))
    proxy._connection.publish = lambda *args, **kwargs: None  # type: ignore[method-assign]
    return proxy


def test_a_reply_from_the_io_thread_resolves_the_awaiting_task(cluster):
    async def scenario():
        future = pending_call(cluster)
        on_io_thread(
            cluster._on_reply,
            reply(future.correlation_id, {"result": [1, 2], "error": None}),
        )
        return await future

    assert asyncio.run(scenario()) == [1, 2]
    assert cluster._pending == {}


def test_an_error_reply_raises_the_remote_error(cluster):
    async def scenario():
        future = pending_call(cluster)
        error = {"type": "KeyError", "message": "'k'", "traceback": "tb"}
        on_io_thread(
            cluster._on_reply,
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
        pending = dict(cluster._pending)
        # The late reply finds nobody and is dropped without a failure.
        on_io_thread(
            cluster._on_reply,
            reply(future.correlation_id, {"result": 1, "error": None}),
        )
        await asyncio.sleep(0)
        return pending

    assert asyncio.run(scenario()) == {}
    assert cluster._pending == {}


def test_the_deadline_raises_call_timeout_and_forgets_the_call(cluster):
    async def scenario():
        future = pending_call(cluster, seconds=0.2)
        with pytest.raises(CallTimeoutError, match="no reply before its deadline"):
            await future

    asyncio.run(scenario())
    assert cluster._pending == {}


def test_expiry_on_the_io_thread_fails_the_call_at_once(cluster):
    async def scenario():
        future = pending_call(cluster, seconds=0.3)
        time.sleep(0.4)  # blocks the loop: only the I/O thread's expiry can fail it
        on_io_thread(cluster._expire)
        await asyncio.sleep(0)  # run the callback the I/O thread scheduled
        assert future.done()
        with pytest.raises(CallTimeoutError):
            await future

    asyncio.run(scenario())
    assert cluster._pending == {}


def test_a_reply_after_the_loop_closed_is_ignored(cluster):
    async def scenario():
        return pending_call(cluster)

    future = asyncio.run(scenario())  # the loop is closed when run() returns
    cluster._on_reply(reply(future.correlation_id, {"result": 1, "error": None}))
    assert not future.done()
