"""A worker and its callers on a real 3-node cluster: the node list, quorum
placement, partitions, and a node frozen (SIGSTOP) under a call."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from rpc import BrokerError, ClusterProxy, Config, ServiceRunner, broker_urls, protocol
from rpc.local_cluster import ClusterNode, LocalCluster
from services.greeter import Greeter
from tests.integration.faults import wait_for
from tests.integration.ledger_service import Ledger
from tests.readme import doc_blocks

pytestmark = [
    pytest.mark.cluster,
    # The first test to run also waits for the session's cluster to boot.
    pytest.mark.timeout(300),
    # py-amqp drops the socket of a handshake that timed out (a frozen node)
    # without closing it; the garbage collector closes it, warning.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

HEARTBEAT = 2.0
NODE_TIMEOUT = 1.0


def ledger_named() -> type[Ledger]:
    """The Ledger under a name of its own: the session's cluster is shared."""
    name = f"ledger-{uuid.uuid4().hex[:8]}"
    return type("NamedLedger", (Ledger,), {"name": name})


@pytest.fixture
def config(healthy_cluster: LocalCluster) -> Config:
    return Config(
        broker_urls=tuple(healthy_cluster.urls),
        queue_type="quorum",
        heartbeat=HEARTBEAT,
        node_connect_timeout=NODE_TIMEOUT,
        connect_timeout=30,
        default_timeout=30,
        max_workers=4,
    )


@pytest.fixture
def started() -> Iterator[list[ServiceRunner]]:
    """Runners a test starts; all stopped after it."""
    runners: list[ServiceRunner] = []
    yield runners
    for runner in runners:
        runner.kill()


def run(started: list[ServiceRunner], service: type, config: Config) -> ServiceRunner:
    runner = ServiceRunner([service], config)
    runner.start()
    started.append(runner)
    return runner


def node_of(cluster: LocalCluster, url: str) -> ClusterNode:
    port = urlsplit(url).port
    return next(node for node in cluster.nodes if node.port == port)


def queues(cluster: LocalCluster, prefix: str) -> dict[str, dict[str, object]]:
    """Our queues as RabbitMQ lists them: leader, members, messages."""
    for node in cluster.nodes:
        if node.running:
            listing = node.ctl(
                "list_queues",
                "name",
                "leader",
                "members",
                "messages",
                "--formatter",
                "json",
                timeout=60,
            )
            break
    return {
        row["name"]: row
        for row in json.loads(listing)
        if str(row["name"]).startswith(prefix)
    }


def waiting(cluster: LocalCluster, names: list[str]) -> list[int]:
    """Messages in each of the queues ``names``, as RabbitMQ last counted them."""
    listed = queues(cluster, "rpc-")
    return [int(listed[name]["messages"]) for name in names]


def test_partitions_have_leaders_on_several_nodes_and_workers_pick_theirs(
    healthy_cluster, config, started
):
    service = ledger_named()
    name = service.name
    partitioned = config.replace(
        partitions={name: 3}, quorum_group_size=2, quorum_leader_locator="balanced"
    )
    run(started, service, partitioned).stop()  # declares the queues, then goes
    started.clear()
    prefix = protocol.service_queue(name)
    declared = queues(healthy_cluster, prefix)
    parts = [protocol.partition_queue(name, index) for index in range(3)]
    assert set(parts) | {prefix} <= set(declared)
    # Balanced: each new queue's leader goes where there are fewest leaders.
    assert len({declared[queue]["leader"] for queue in parts}) >= 2
    for queue in [*parts, prefix]:
        assert len(declared[queue]["members"]) == 2, queue  # quorum_group_size

    with ClusterProxy(config=partitioned) as cluster:
        tokens = [uuid.uuid4().hex for _ in range(30)]
        for token in tokens:
            getattr(cluster, name).record.cast(token)  # confirmed: in its queue
    # RabbitMQ counts a quorum queue's messages every few seconds.
    wait_for(lambda: sum(waiting(healthy_cluster, parts)) == 30, 30, "the counts of 30")
    counts = waiting(healthy_cluster, parts)
    assert all(counts), counts  # the callers spread them over every partition
    assert waiting(healthy_cluster, [prefix]) == [0]

    run(started, service, partitioned.replace(serve_partitions=(0,)))
    wait_for(
        lambda: sum(service.count(t) for t in tokens) == counts[0],
        30,
        "partition 0 to be served",
    )
    assert waiting(healthy_cluster, parts[1:]) == counts[1:]
    run(started, service, partitioned)  # all partitions
    wait_for(
        lambda: all(service.count(t) == 1 for t in tokens), 30, "every cast to run"
    )
    # A caller that knows nothing of the partitions reaches the service queue.
    with ClusterProxy(config=config) as plain:
        assert getattr(plain, name).record("plain") == "plain"


class _FirstNode:
    """Stands in for :mod:`random` in rpc.broker_urls: every list starts at its head."""

    @staticmethod
    def randrange(count: int) -> int:
        return 0


def starting_at(config: Config, *nodes: ClusterNode) -> Config:
    """``config`` with ``nodes`` first in its list, in that order: with _FirstNode,
    the first is dialled first, and the second next."""
    first = [node.url for node in nodes]
    urls = [*first, *(url for url in config.broker_urls if url not in first)]
    # Direct reply-to: a private reply queue is declared on every connection, and
    # while a node is frozen a declaration waits for the cluster to give up on it
    # (net_ticktime; docs/cluster.md), which is not what this test measures.
    return config.replace(
        broker_urls=tuple(urls), broker_order="listed", reply_queue="direct"
    )


def test_a_frozen_node_fails_its_calls_in_flight_and_the_rest_goes_on(
    healthy_cluster, config, started, monkeypatch
):
    # The caller is on the node frozen; the worker, and so the leader of the
    # service's queue (client-local), on another. docs/cluster.md says what a
    # frozen leader costs, and docs/cluster-faults.md has the whole matrix.
    monkeypatch.setattr(broker_urls, "random", _FirstNode)
    index = uuid.uuid4().int % 3
    frozen = healthy_cluster.nodes[index]
    healthy = healthy_cluster.nodes[(index + 1) % 3]
    service = ledger_named()
    run(started, service, starting_at(config, healthy))
    on_frozen = starting_at(config, frozen, healthy)
    with ClusterProxy(config=on_frozen) as cluster:
        ledger = getattr(cluster, service.name)
        assert ledger.record("warm") == "warm"
        assert node_of(healthy_cluster, cluster._connection.node) is frozen
        token = uuid.uuid4().hex
        future = ledger.record.call_async(token, seconds=3)
        wait_for(lambda: service.count(token), 10, "the handler to start")

        frozen.freeze()
        try:
            started_at = time.monotonic()
            with pytest.raises(BrokerError, match="lost while the call was in flight"):
                future.result(timeout=30)
            noticed = time.monotonic() - started_at
            assert noticed < 2 * HEARTBEAT + 2.0
            # New calls go to the healthy nodes: the next in the list first.
            again = uuid.uuid4().hex
            assert ledger.record(again) == again
            served = time.monotonic() - started_at
            assert node_of(healthy_cluster, cluster._connection.node) is healthy

            # A process starting now, with the frozen node first in its list,
            # spends one node timeout on it, then connects to the next.
            connect_at = time.monotonic()
            with ClusterProxy(config=on_frozen) as late:
                late._start_connection()
                assert node_of(healthy_cluster, late._connection.node) is healthy
            connect = time.monotonic() - connect_at
            assert NODE_TIMEOUT - 0.2 < connect < NODE_TIMEOUT + 2.0
        finally:
            frozen.thaw()
    print(
        f"\nfrozen node: call failed after {noticed:.1f}s, next call answered after "
        f"{served:.1f}s, a new connection took {connect:.1f}s"
    )


def test_the_example_of_docs_cluster_md_runs(healthy_cluster, config, started, capsys):
    run(started, Greeter, config)
    code = doc_blocks("cluster.md")[0]
    for index, url in enumerate(healthy_cluster.urls, start=1):
        code = code.replace(f"amqp://guest:guest@rabbit{index}:5672//", url)
    assert "rabbit" not in code
    exec(compile(code, "docs/cluster.md", "exec"), {})
    assert capsys.readouterr().out.splitlines()[-1] == "Hello, cluster!"
