"""Partitions: callers spread a service's calls over its partition queues, workers
consume all of them or their share, in memory (the cluster test does it on RabbitMQ)."""

from __future__ import annotations

import uuid

import pytest

from rpc import protocol, rpc
from rpc.calls import CallBuilder
from rpc.config import Config
from rpc.errors import ConfigError
from rpc.middleware import ClientChain
from rpc.testing import ServiceCluster


def test_a_partitioned_service_is_called_on_a_random_partition():
    builder = CallBuilder(
        Config(broker_url="memory://", partitions={"orders": 3}), "c", ClientChain()
    )
    keys = {builder.request("orders", "put", [], {}, 5).routing_key for _ in range(90)}
    assert keys == {f"orders.put.partition-{index}" for index in range(3)}
    assert builder.cast("orders", "put", [], {}).routing_key.startswith("orders.put.")
    # Another service, and a sharded call, go as before.
    assert builder.request("users", "get", [], {}, 5).routing_key == "users.get"
    sharded = builder.request("orders", "put", [], {}, 5, shard_key="k")
    assert sharded.routing_key == protocol.shard_routing_key("orders", "put")


def test_partition_names_and_the_key_checksum_are_stable():
    assert protocol.partition_queue("orders", 2) == "rpc-orders.partition.2"
    assert protocol.partition_binding("orders", 2) == "orders.*.partition-2"
    assert protocol.partition_for("user-42", 3) == protocol.partition_for("user-42", 3)
    assert (
        protocol.partition_for("user-42", 1000) == 435
    )  # zlib.crc32(b'user-42') % 1000
    assert protocol.owns_queue("orders", protocol.partition_queue("orders", 0))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"partitions": {"orders": 0}}, "at least 1"),
        ({"partitions": "orders"}, "SERVICE=COUNT"),
        ({"serve_partitions": "a,b"}, "serve_partitions"),
        ({"serve_partitions": [-1]}, "negative"),
        ({"quorum_leader_locator": "random"}, "balanced"),
    ],
)
def test_bad_cluster_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        Config(**settings)


def test_cluster_settings_from_the_environment():
    config = Config.load(
        environ={"RPC_PARTITIONS": "orders=3, users=2", "RPC_SERVE_PARTITIONS": "2,0"}
    )
    assert config.partitions == {"orders": 3, "users": 2}
    assert config.serve_partitions == (0, 2)
    assert Config.load(environ={"RPC_QUORUM_GROUP_SIZE": "3"}).quorum_placement() == {
        protocol.GROUP_SIZE_ARGUMENT: 3
    }


def test_a_caller_picks_a_partition_by_index_or_by_key():
    builder = CallBuilder(
        Config(broker_url="memory://", partitions={"orders": 3}), "c", ClientChain()
    )
    assert builder.request("orders", "put", [], {}, 5, partition=4).routing_key == (
        "orders.put.partition-1"
    )
    by_key = {
        builder.cast("orders", "put", [], {}, partition="user-42").routing_key
        for _ in range(10)
    }
    assert by_key == {f"orders.put.partition-{protocol.partition_for('user-42', 3)}"}


def counter_named() -> type:
    class Counter:
        name = f"counter-{uuid.uuid4().hex[:8]}"

        @rpc
        def add(self, item: int) -> int:
            return item

    return Counter


def test_workers_serve_every_partition_or_their_share_and_the_service_queue():
    service = counter_named()
    name = service.name  # type: ignore[attr-defined]
    with ServiceCluster(partitions={name: 2}) as cluster:
        cluster.start(service, serve_partitions=(1,))
        add = getattr(cluster.proxy, name).add
        assert add.partition(1)(1) == 1  # the worker serves partition 1
        waiting = add.partition(0).call_async(0)
        with pytest.raises(TimeoutError):
            waiting.result(timeout=0.5)  # declared, but nobody serves it yet
        cluster.start(service)  # all partitions
        assert waiting.result(timeout=10) == 0
    with ServiceCluster() as plain:  # a caller that knows no partitions
        plain.start(service, partitions={name: 2})
        assert getattr(plain.proxy, name).add.partition(1)(99) == 99
