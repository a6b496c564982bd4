"""Checked by mypy only: event handlers and sharded methods keep their types."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typing_extensions import assert_type

from rpc import (
    BROADCAST,
    AsyncClusterProxy,
    ClientCall,
    ClusterProxy,
    MethodProxy,
    Middleware,
    ServiceProxy,
    event_handler,
    rpc,
)
from rpc.serialization import JsonValue


class Typed:
    name = "typed"

    @rpc(shard_by="key")
    def get(self, key: str) -> int:
        return len(key)

    @event_handler("shop", ["orders.*", "#"], handler_type=BROADCAST)
    def on_order(self, payload: dict[str, int]) -> int:
        return payload["id"]


def check(cluster: ClusterProxy) -> None:
    service = Typed()
    assert_type(service.get("k"), int)
    assert_type(service.on_order({"id": 1}), int)
    method = cluster.typed.get
    assert_type(method.shard("user:1"), MethodProxy)
    assert_type(method.with_options(idempotent=True), MethodProxy)
    assert_type(cluster.typed.with_options(timeout=1), ServiceProxy)
    assert_type(method.cast(1), None)
    assert_type(method.map([1, 2]), Iterator[JsonValue])
    cluster.dispatch("shop", "orders.created", {"id": 1})
    assert_type(cluster.discover(wait=1, quiet=0.1), dict[str, Any])


def check_middleware(url: str) -> None:
    class Tracing(Middleware):
        def before_send(self, call: ClientCall) -> None:
            call.headers["x-trace"] = "1"

    assert_type(ClusterProxy(url, middleware=[Tracing()]), ClusterProxy)
    assert_type(AsyncClusterProxy(url, middleware=(Tracing(),)), AsyncClusterProxy)
