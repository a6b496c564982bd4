"""Checked by mypy only: async handlers keep their types; the async proxies await."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from rpc import (
    AsyncClusterProxy,
    AsyncMethodProxy,
    AsyncRpcFuture,
    AsyncServiceProxy,
    rpc,
)


class AsyncTyped:
    name = "async-typed"

    @rpc
    async def add(self, a: int, b: int) -> int:
        return a + b


async def check() -> None:
    assert_type(await AsyncTyped().add(1, 2), int)
    async with AsyncClusterProxy("amqp://guest:guest@localhost:5672//") as cluster:
        assert_type(cluster, AsyncClusterProxy)
        assert_type(cluster.greeter, AsyncServiceProxy)
        assert_type(cluster.greeter.hello, AsyncMethodProxy)
        assert_type(cluster.greeter.with_options(timeout=1), AsyncServiceProxy)
        assert_type(cluster.greeter.hello.with_options(timeout=1), AsyncMethodProxy)
        assert_type(cluster.greeter.hello.shard("k"), AsyncMethodProxy)
        assert_type(await cluster.greeter.hello("x"), Any)
        future = await cluster.greeter.hello.call_async("x")
        assert_type(future, AsyncRpcFuture)
        assert_type(await future, Any)
        assert_type(await cluster.discover(), dict[str, Any])
        await cluster.greeter.hello.cast("x")
