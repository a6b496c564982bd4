"""Client middleware on the in-memory transport: headers, outcomes, refusals."""

from __future__ import annotations

from rpc import ClusterProxy
from services.cache import Cache
from tests.behaviour import ClientMiddlewareBehaviour, RecordingSends


class TestClientMiddlewareInMemory(ClientMiddlewareBehaviour):
    pass


def test_sharded_calls_go_through_it(rpc_cluster):
    # In memory only: the broker of the integration tests may lack the
    # consistent-hash exchange plugin.
    rpc_cluster.start(Cache)
    sends = RecordingSends()
    with ClusterProxy(config=rpc_cluster.config, middleware=[sends]) as proxy:
        proxy.cache.put.shard("k")("k", 1)
        assert proxy.cache.get.shard("k")("k") == 1
    assert sends.outcomes(2) == [("call cache.put", None), ("call cache.get", 1)]
    assert all(
        call.headers["x-trace"] == f"trace-{call.method}" for call in sends.before
    )
