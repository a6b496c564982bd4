"""The in-memory transport routes like RabbitMQ: shards, exchange bindings, queues."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator

import kombu
import pytest

from rpc import protocol
from rpc.memory import Transport, jump_hash, key_hash, transport_for
from rpc.testing import ServiceCluster
from services.cache import Cache
from tests.behaviour import Owners

SERVICE = "ring"


@pytest.fixture
def channel(memory_broker_url: str) -> Iterator[kombu.transport.virtual.Channel]:
    with kombu.Connection(memory_broker_url, transport=Transport) as connection:
        yield connection.default_channel


def declare_ring(channel) -> str:
    """The exchanges of a sharded service, declared and bound as a worker does."""
    channel.exchange_declare(protocol.RPC_EXCHANGE, "topic", durable=True)
    exchange = protocol.shard_exchange(SERVICE)
    channel.exchange_declare(
        exchange,
        protocol.SHARD_EXCHANGE_TYPE,
        durable=True,
        arguments={"hash-header": protocol.HEADER_SHARD_KEY},
    )
    channel.exchange_bind(
        destination=exchange,
        source=protocol.RPC_EXCHANGE,
        routing_key=protocol.shard_binding(SERVICE),
    )
    return exchange


def join(channel, exchange: str, worker: str) -> str:
    queue = protocol.shard_queue(SERVICE, worker)
    channel.queue_declare(queue, exclusive=True, auto_delete=True)
    channel.queue_bind(queue, exchange, str(protocol.SHARD_WEIGHT))
    return queue


def owner(channel, key: str) -> str:
    (queue,) = channel.routes(
        protocol.RPC_EXCHANGE,
        protocol.shard_routing_key(SERVICE, "get"),
        {protocol.HEADER_SHARD_KEY: key},
    )
    return str(queue)


def publish(channel, exchange: str, routing_key: str, body: str, **headers) -> None:
    channel.basic_publish(
        channel.prepare_message(body, headers=headers), exchange, routing_key
    )


def text(message) -> str:
    body = message.body
    return body.decode() if isinstance(body, bytes) else str(body)


def drain(channel, queue: str) -> list[str]:
    bodies = []
    while (message := channel.basic_get(queue, no_ack=True)) is not None:
        bodies.append(text(message))
    return bodies


# -- the hash ------------------------------------------------------------------------


def test_jump_hash_stays_in_range_and_moves_keys_only_to_a_new_bucket():
    keys = [key_hash(f"user:{n}") for n in range(4000)]
    four = [jump_hash(key, 4) for key in keys]
    five = [jump_hash(key, 5) for key in keys]
    assert set(four) == {0, 1, 2, 3}
    assert all(b == a or b == 4 for a, b in zip(four, five, strict=True))
    assert 600 <= five.count(4) <= 1000  # about a fifth
    assert [jump_hash(key, 4) for key in keys] == four  # stable
    assert {jump_hash(key, 1) for key in keys} == {0}
    with pytest.raises(ValueError):
        jump_hash(1, 0)


def test_keys_with_a_pattern_spread_evenly():
    counts = Counter(jump_hash(key_hash(f"user:{n}"), 4) for n in range(20_000))
    assert all(abs(count - 5000) <= 5000 * 0.05 for count in counts.values()), counts


def test_memory_urls_get_this_transport():
    assert transport_for("memory://") is Transport
    assert transport_for("amqp://guest:guest@localhost:5672//") is None


# -- routing -------------------------------------------------------------------------


def test_a_key_reaches_one_queue_through_the_exchange_binding(channel):
    exchange = declare_ring(channel)
    queues = [join(channel, exchange, worker) for worker in "abc"]
    keys = [f"user:{n}" for n in range(300)]
    for key in keys:
        publish(
            channel,
            protocol.RPC_EXCHANGE,
            protocol.shard_routing_key(SERVICE, "get"),
            key,
            **{protocol.HEADER_SHARD_KEY: key},
        )
    where = {queue: drain(channel, queue) for queue in queues}
    assert sorted(key for got in where.values() for key in got) == sorted(keys)
    assert all(where.values())  # every queue got some
    for queue, got in where.items():
        assert all(owner(channel, key) == queue for key in got)


def test_only_matching_routing_keys_pass_the_exchange_binding(channel):
    exchange = declare_ring(channel)
    join(channel, exchange, "a")
    header = {protocol.HEADER_SHARD_KEY: "k"}
    rpc = protocol.RPC_EXCHANGE
    assert channel.routes(rpc, protocol.shard_routing_key(SERVICE, "get"), header)
    assert not channel.routes(rpc, protocol.routing_key(SERVICE, "get"), header)
    other = protocol.shard_routing_key("other", "get")
    assert not channel.routes(rpc, other, header)
    channel.exchange_unbind(
        destination=exchange, source=rpc, routing_key=protocol.shard_binding(SERVICE)
    )
    assert not channel.routes(rpc, protocol.shard_routing_key(SERVICE, "get"), header)


def test_a_ring_without_queues_routes_nothing(channel):
    declare_ring(channel)
    key = protocol.shard_routing_key(SERVICE, "get")
    assert channel.routes(protocol.RPC_EXCHANGE, key, {}) == set()


def test_a_deleted_queue_is_unbound_and_not_recreated(channel):
    exchange = declare_ring(channel)
    first = join(channel, exchange, "a")
    second = join(channel, exchange, "b")
    keys = [f"k{n}" for n in range(50)]
    assert {owner(channel, key) for key in keys} == {first, second}
    channel.queue_delete(second)
    assert {owner(channel, key) for key in keys} == {first}
    publish(channel, "", second, "lost")  # the default exchange: no such queue
    assert not channel._has_queue(second)


def test_an_exclusive_queue_goes_with_its_connection(memory_broker_url):
    name = f"private-{uuid.uuid4().hex}"
    with kombu.Connection(memory_broker_url, transport=Transport) as connection:
        channel = connection.default_channel
        channel.exchange_declare("events", "fanout")
        channel.queue_declare(name, exclusive=True)
        channel.queue_bind(name, "events")
        assert channel.routes("events", "", {}) == {name}
    with kombu.Connection(memory_broker_url, transport=Transport) as connection:
        channel = connection.default_channel
        assert channel.routes("events", "", {}) == set()
        assert not channel._has_queue(name)


def test_an_exclusive_auto_delete_queue_goes_with_its_consumer(channel):
    name = f"private-{uuid.uuid4().hex}"
    channel.queue_declare(name, exclusive=True, auto_delete=True)
    channel.basic_consume(name, no_ack=True, callback=lambda m: None, consumer_tag="t")
    assert channel._has_queue(name)
    channel.basic_cancel("t")
    assert not channel._has_queue(name)


def test_a_rejected_message_goes_back_to_its_own_queue_only(channel):
    channel.exchange_declare("topics", "topic")
    for queue in ("left", "right"):
        channel.queue_declare(queue)
        channel.queue_bind(queue, "topics", "a.*")
    publish(channel, "topics", "a.b", "once")
    message = channel.basic_get("left")
    assert not message.delivery_info.get("redelivered")
    channel.basic_reject(message.delivery_tag, requeue=True)
    again = channel.basic_get("left", no_ack=True)
    assert text(again) == "once"
    assert again.delivery_info["redelivered"] is True
    assert drain(channel, "right") == ["once"]  # its own copy, not a second one
    assert drain(channel, "left") == []


# -- sharded services ------------------------------------------------------------------


def test_a_worker_that_stops_hands_its_keys_back(rpc_cluster: ServiceCluster):
    owners = Owners()
    runners = [owners.watch(rpc_cluster.start(Cache)) for _ in range(4)]
    keys = [f"{uuid.uuid4().hex}:{n}" for n in range(120)]

    def route() -> dict[str, str]:
        for key in keys:
            rpc_cluster.proxy.cache.get.shard(key)(key)
        return owners.of(keys)

    before = route()
    leaving = runners.pop()  # the newest: only its own keys move
    leaving.stop()
    after = route()
    assert leaving.instance_id not in after.values()
    assert all(after[k] == before[k] for k in keys if before[k] != leaving.instance_id)
    middle = runners.pop(1)  # bound earlier: keys of workers bound before it stay
    middle.stop()
    last = route()
    assert middle.instance_id not in last.values()
    assert all(last[k] == after[k] for k in keys if after[k] == runners[0].instance_id)
    assert set(last.values()) == {runner.instance_id for runner in runners}
