"""Key-sharded routing over RabbitMQ's consistent-hash exchange."""

from __future__ import annotations

import collections
import time

import kombu
import pytest

from rpc import (
    ClusterProxy,
    Config,
    ServiceRunner,
    UnknownServiceError,
    current_call,
    protocol,
    rpc,
)
from rpc.protocol import Request
from rpc.worker.consumers import RpcQueueConsumer
from rpc.worker.dispatch import Work
from tests.integration import topology_fixtures as fixtures
from tests.integration.topology_services import Cache, Sink

# Shared fixtures: a config on the test's vhost, runners, a recorder, a client.
config, record = fixtures.config, fixtures.record
runners, cluster = fixtures.runners, fixtures.cluster

SERVICE = "shardtest"


class Ring:
    """Worker queues bound to a service's shard exchange exactly as workers bind them.

    Plain queues nobody consumes, so a test can count where each key was routed.
    """

    def __init__(self, connection: kombu.Connection) -> None:
        self.channel = connection.channel()
        self.channel.exchange_declare(
            protocol.RPC_EXCHANGE, "topic", durable=True, auto_delete=False
        )
        self.exchange = protocol.shard_exchange(SERVICE)
        self.channel.exchange_declare(
            self.exchange,
            protocol.SHARD_EXCHANGE_TYPE,
            durable=True,
            auto_delete=False,
            arguments={"hash-header": protocol.HEADER_SHARD_KEY},
        )
        self.channel.exchange_bind(
            destination=self.exchange,
            source=protocol.RPC_EXCHANGE,
            routing_key=protocol.shard_binding(SERVICE),
        )
        self.queues: list[str] = []

    def join(self, worker: str) -> str:
        queue = protocol.shard_queue(SERVICE, worker)
        self.channel.queue_declare(queue, durable=False, auto_delete=False)
        self.channel.queue_bind(queue, self.exchange, str(protocol.SHARD_WEIGHT))
        self.queues.append(queue)
        return queue

    def leave(self, queue: str) -> None:
        self.channel.queue_delete(queue)
        self.queues.remove(queue)

    def route(self, keys: list[str]) -> None:
        """Publish one message per key as a sharded call; wait for the confirms."""
        self.channel.confirm_select()
        for key in keys:
            self.channel.basic_publish(
                self.channel.prepare_message(
                    key.encode(), headers={protocol.HEADER_SHARD_KEY: key}
                ),
                exchange=protocol.RPC_EXCHANGE,
                routing_key=protocol.shard_routing_key(SERVICE, "get"),
            )
        self.channel.basic_publish(  # the broker confirms in order: this one last
            self.channel.prepare_message(b"", headers={}),
            exchange="",
            routing_key="",
        )

    def counts(self, total: int, timeout: float = 60) -> dict[str, int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = {
                q: self.channel.queue_declare(q, passive=True).message_count
                for q in self.queues
            }
            if sum(counts.values()) >= total or time.monotonic() > deadline:
                return counts
            time.sleep(0.2)

    def drain(self) -> dict[str, str]:
        """Which queue each routed key is in, emptying the queues."""
        owner: dict[str, str] = {}
        for queue in self.queues:
            while (message := self.channel.basic_get(queue, no_ack=True)) is not None:
                key = message.body.decode()
                assert key not in owner, f"{key} routed twice"
                owner[key] = queue
        return owner


@pytest.fixture
def ring(broker_url):
    with kombu.Connection(broker_url) as connection:
        yield Ring(connection)


def test_100000_user_keys_spread_evenly_over_4_workers(ring):
    for worker in "abcd":
        ring.join(worker)
    keys = [f"user:{n}" for n in range(100_000)]
    ring.route(keys)
    counts = ring.counts(len(keys))
    assert sum(counts.values()) == len(keys)
    for count in counts.values():
        assert abs(count - 25_000) <= 25_000 * 0.04, counts  # within 4% of even


def test_the_mapping_is_stable_and_only_a_share_moves_when_a_worker_joins(ring):
    for worker in "abcd":
        ring.join(worker)
    keys = [f"user:{n}" for n in range(4000)]
    ring.route(keys)
    ring.counts(len(keys))
    before = ring.drain()
    ring.route(keys)
    ring.counts(len(keys))
    assert ring.drain() == before  # same keys, same workers
    new = ring.join("e")
    ring.route(keys)
    ring.counts(len(keys))
    after = ring.drain()
    moved = [key for key in keys if after[key] != before[key]]
    # Keys only move to the newcomer, never between the workers that stayed...
    assert all(after[key] == new for key in moved)
    # ...and about a fifth of them do (4000 keys: a fifth is 800).
    assert 600 <= len(moved) <= 1000


@pytest.mark.parametrize("leaving", [3, 1])
def test_when_a_worker_leaves_its_keys_and_later_workers_keys_move(ring, leaving):
    # The plugin numbers hash buckets in binding order: when a worker leaves, the
    # workers bound after it are renumbered and some of their keys move too.
    for worker in "abcd":
        ring.join(worker)
    keys = [f"user:{n}" for n in range(4000)]
    ring.route(keys)
    ring.counts(len(keys))
    before = ring.drain()
    earlier = set(ring.queues[:leaving])
    gone = ring.queues[leaving]
    ring.leave(gone)
    ring.route(keys)
    ring.counts(len(keys))
    after = ring.drain()
    assert all(after[key] != gone for key in keys)
    for key in keys:
        if before[key] in earlier:
            assert after[key] == before[key]  # workers bound earlier keep theirs
    if leaving == 3:  # the newest worker left: nothing else moved
        assert all(after[k] == before[k] for k in keys if before[k] != gone)


def test_same_key_same_worker_with_real_workers(runners, cluster):
    workers = {runners.start(Cache).instance_id for _ in range(4)}
    keys = [f"user:{n}" for n in range(200)]
    owners = dict(zip(keys, cluster.cache.owner.map(keys), strict=True))
    assert set(owners.values()) == workers  # every worker owns some keys
    for key in keys[:50]:
        assert cluster.cache.owner.shard(key)(key) == owners[key]
        assert cluster.cache.anyone.shard(key)() == owners[key]


def test_shard_by_routes_plain_calls_by_the_argument(runners, cluster):
    for _ in range(3):
        runners.start(Cache)
    for key in ["alpha", "beta", "gamma", "delta", "user:1", "user:2"]:
        owner = cluster.cache.owner.shard(key)(key)
        plain = collections.Counter(cluster.cache.owner(key=key) for _ in range(6))
        assert plain == {owner: 6}


def test_a_service_without_sharding_refuses_sharded_calls(runners, cluster):
    runners.start(Sink)
    with pytest.raises(UnknownServiceError):
        cluster.sink.put.shard("k")(1)


class Counted:
    name = "counted"

    @rpc(shard_by="key")
    def seen(self, key: str) -> dict[str, object]:
        call = current_call()
        assert call is not None
        return {"redelivered": call.redelivered, "count": call.request.delivery_count}


def test_a_sharded_request_handed_back_is_counted_with_quorum_service_queues(
    broker_url, monkeypatch
):
    # Shard queues are classic even when the service queue is a quorum queue: the
    # broker counts nothing there, so the worker must, or a request handed back
    # again and again would never reach the delivery limit.
    config = Config(
        broker_url=broker_url, default_timeout=20, max_workers=2, queue_type="quorum"
    )
    runner = ServiceRunner([Counted], config)
    admit = RpcQueueConsumer.admit
    failed: list[object] = []

    def fail_once(consumer: RpcQueueConsumer, work: Work) -> Request | None:
        if not failed:
            failed.append(work.delivery)
            raise RuntimeError("an unexpected failure, once")  # handed back
        return admit(consumer, work)

    monkeypatch.setattr(RpcQueueConsumer, "admit", fail_once)
    with runner, ClusterProxy(config=config) as proxy:
        assert proxy.counted.seen.shard("k")("k") == {"redelivered": True, "count": 2}
    assert len(failed) == 1
