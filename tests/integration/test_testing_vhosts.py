"""The per-test vhosts of the pytest plugin, on the real broker."""

from __future__ import annotations

import pytest

from rpc import BrokerError, UnknownServiceError
from rpc.testing import ServiceCluster, VirtualHosts
from services.greeter import Greeter


def test_each_test_gets_a_vhost_of_its_own(broker_url, rpc_base_broker_url, rpc_vhosts):
    assert rpc_vhosts.method is not None  # the local broker can make them
    assert broker_url != rpc_base_broker_url
    assert broker_url.rsplit("/", 1)[1].startswith("test-")


def test_vhosts_isolate_and_are_deleted(rpc_vhosts: VirtualHosts):
    first, second = rpc_vhosts.create(), rpc_vhosts.create()
    try:
        with ServiceCluster(first, default_timeout=20) as cluster:
            cluster.start(Greeter)
            assert cluster.proxy.greeter.hello("x") == "Hello, x!"
            with (
                ServiceCluster(second, default_timeout=20) as other,
                pytest.raises(UnknownServiceError),
            ):
                other.proxy.greeter.hello("x")
    finally:
        rpc_vhosts.delete(first, second)
    with (
        pytest.raises(BrokerError),
        ServiceCluster(first, connect_timeout=0.5) as gone,
    ):
        gone.proxy.greeter.hello("x")
