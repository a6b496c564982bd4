"""A `;`-separated list of brokers: each connection attempt dials the next one."""

from __future__ import annotations

from rpc import ClusterProxy, Config, ServiceRunner
from rpc.local_cluster import free_port
from services.greeter import Greeter


def test_a_broker_that_is_down_is_skipped_for_the_next_in_the_list(broker_url):
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
    config = Config(broker_url=f"{down};{broker_url}", connect_timeout=10)
    with ServiceRunner([Greeter], config), ClusterProxy(config=config) as cluster:
        assert cluster.greeter.hello("list") == "Hello, list!"
