"""Service and method proxies, no broker: names, options and what derives from them."""

from __future__ import annotations

import pytest

from rpc import (
    AsyncClusterProxy,
    AsyncMethodProxy,
    AsyncServiceProxy,
    ClusterProxy,
    Config,
    MethodProxy,
    ServiceProxy,
)
from services.compute import Compute
from services.greeter import Greeter

TWINS = [
    pytest.param((ClusterProxy, ServiceProxy, MethodProxy), id="threaded"),
    pytest.param(
        (AsyncClusterProxy, AsyncServiceProxy, AsyncMethodProxy), id="asyncio"
    ),
]


@pytest.fixture(params=TWINS)
def twin(request):
    cluster_type, service_type, method_type = request.param
    # Made, never started: nothing here connects.
    cluster = cluster_type(config=Config(broker_url="memory://"))
    return cluster, service_type, method_type


def test_names_are_checked_and_shown(twin):
    cluster, service_type, method_type = twin
    service = cluster["greeter"]
    method = service.hello
    assert type(service) is service_type
    assert type(method) is method_type
    assert repr(service) == f"<{service_type.__name__} greeter>"
    assert repr(method) == f"<{method_type.__name__} greeter.hello>"
    with pytest.raises(ValueError):
        cluster["bad name"]
    with pytest.raises(ValueError):
        getattr(service, "bad-name")


def test_service_options_reach_its_methods(twin):
    cluster, service_type, _ = twin
    quick = cluster["greeter"].with_options(timeout=2)
    assert type(quick) is service_type
    assert quick.hello._timeout == 2
    assert cluster["greeter"].hello._timeout is not quick.hello._timeout


def test_derived_methods_keep_the_options_not_given(twin):
    cluster, _, method_type = twin
    method = cluster["cache"].get.with_options(timeout=3, idempotent=True)
    sharded = method.shard(42)
    assert type(sharded) is method_type
    assert (sharded._timeout, sharded._idempotent, sharded._shard_key) == (
        3,
        True,
        "42",
    )
    again = sharded.with_options(timeout=5)
    assert (again._timeout, again._idempotent, again._shard_key) == (5, True, "42")
    kept = again.with_options()
    assert (kept._timeout, kept._idempotent, kept._shard_key) == (5, True, "42")
    assert method._shard_key is None


def test_discover_returns_once_every_worker_answered(rpc_cluster):
    for _ in range(3):
        rpc_cluster.start(Greeter)
    rpc_cluster.start(Compute)
    with ClusterProxy(config=rpc_cluster.config) as cluster:
        # An upper bound far beyond the test's timeout: only answers end these.
        first = cluster.discover(wait=600)
        second = cluster.discover(wait=600)
        rpc_cluster.runners[0].stop()
        # A worker known from before is missing: this one waits the bound...
        after_stop = cluster.discover(wait=0.5)
        # ...and the next one no longer waits for it.
        last = cluster.discover(wait=600)
    assert first == second
    assert first["greeter"]["workers"] == 3
    assert first["compute"]["workers"] == 1
    assert "hello" in first["greeter"]["methods"]
    assert after_stop["greeter"]["workers"] == last["greeter"]["workers"] == 2


def test_discover_waits_the_bound_when_no_worker_runs(rpc_cluster):
    with ClusterProxy(config=rpc_cluster.config) as cluster:
        assert cluster.discover(wait=0.2) == {}
        assert len(cluster._pending) == 0 and cluster._pending.listening == 0
