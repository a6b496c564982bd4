"""Faults of a 3-node cluster under load, seen by real daemons and a caller.

Two daemons of the journal service and a caller sending calls, idempotent calls,
confirmed casts and events run on the session's private cluster, each process
given the nodes in its own order; then one node is killed, stopped or frozen
mid-run. Whatever the fault, every confirmed cast and event runs, every idempotent
call is answered, other calls answer or fail with BrokerError within their
timeout, and no process reconnects more than three times.
docs/cluster-faults.md has the table of these faults and what each one costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import amqp
import pytest

from rpc import Config, protocol
from rpc.local_cluster import LocalCluster
from tests.integration.cluster_load import (
    Daemon,
    Load,
    broker_errors_only,
    daemons,
    node_urls,
    private_vhost,
    wait_recorded,
)
from tests.integration.cluster_services import entries

#: The first test of the session also waits for the cluster to boot (a minute or
#: two on a busy machine), and a killed node is started again after each test.
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

#: Seconds between heartbeats: short, so that a frozen node is noticed in time.
HEARTBEAT = 2.0
MAX_RECONNECTS = 3
#: Seconds a node is frozen (SIGSTOP): longer than two heartbeats, shorter than
#: RabbitMQ's net_ticktime, so the other nodes do not take it for gone.
FREEZE = 3 * HEARTBEAT
#: Seconds from a kill to the first call answered after it.
MAX_RECOVERY = 5.0
#: Successful sends of each kind before the fault, and calls after it.
BEFORE = 15
AFTER = 20


@dataclasses.dataclass
class Run:
    cluster: LocalCluster
    vhost: str
    journal: Path
    logs: Path

    def urls(self, order: Sequence[int]) -> str:
        return node_urls(self.cluster, order, self.vhost)

    def journal_of(self, name: str) -> Callable[[], list[str]]:
        return lambda: entries(self.journal, name)


@pytest.fixture
def run(healthy_cluster: LocalCluster, tmp_path: Path) -> Iterator[Run]:
    """Queues of the test's own, in a vhost of its own: none left by a fault before."""
    journal = tmp_path / "journal"
    journal.mkdir()
    with private_vhost(healthy_cluster) as vhost:
        yield Run(healthy_cluster, vhost, journal, tmp_path)


def settings(queue_type: str) -> dict[str, str]:
    return {
        "queue_type": queue_type,
        "heartbeat": str(HEARTBEAT),
        "retry_delay": "0.5",
        "connect_timeout": "20",
        # Each process is given its node first: the fault then hits the one meant.
        "broker_order": "listed",
    }


def config(queue_type: str) -> Config:
    return Config(
        queue_type=queue_type,
        heartbeat=HEARTBEAT,
        connect_timeout=20,
        broker_order="listed",
    )


def wait_serving(started: Sequence[Daemon], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all("serving journal" in daemon.text() for daemon in started):
        for daemon in started:
            assert daemon.process.poll() is None, daemon.text()
        assert time.monotonic() < deadline, "daemons did not start"
        time.sleep(0.1)


@contextlib.contextmanager
def under_load(
    run: Run,
    daemon_orders: Sequence[Sequence[int]],
    client_order: Sequence[int],
    *,
    queue_type: str = "quorum",
    cast_method: str = "record",
) -> Iterator[tuple[list[Daemon], Load]]:
    """Daemons and a load, running with ``BEFORE`` of each kind through."""
    urls = [run.urls(order) for order in daemon_orders]
    with daemons(urls, run.journal, run.logs, **settings(queue_type)) as started:
        wait_serving(started)
        with Load(
            run.urls(client_order), config=config(queue_type), cast_method=cast_method
        ) as load:
            for kind in Load.KINDS:
                load.wait_for(kind, BEFORE)
            yield started, load


def after_the_fault(load: Load, fault: float) -> None:
    """Let the load run on until ``AFTER`` calls were answered after the fault."""
    deadline = time.monotonic() + 60
    while True:
        answered = [
            outcome
            for outcome in load.of("read")
            if outcome.ok and outcome.started >= fault
        ]
        if len(answered) >= AFTER or time.monotonic() > deadline:
            return
        time.sleep(0.1)


def check(run: Run, started: Sequence[Daemon], load: Load, fault: float) -> dict:
    """The assertions every fault shares; what was measured, for the docs."""
    load.stop()
    for outcome in load.outcomes:
        if outcome.error is not None:
            print(
                outcome.kind,
                round(outcome.started - fault, 2),
                round(outcome.ended - fault, 2),
                repr(outcome.error),
            )
    casts = load.confirmed("cast")
    missing = wait_recorded(run.journal_of("casts"), casts)
    assert not missing, f"{len(missing)} of {len(casts)} confirmed casts never ran"
    events = load.confirmed("event")
    missing = wait_recorded(run.journal_of("events"), events)
    assert not missing, f"{len(missing)} of {len(events)} confirmed events never ran"
    assert load.errors("read") == [], "an idempotent call was not answered"
    assert broker_errors_only(load.errors("write")) == []
    assert load.longest("write") < load.call_timeout + 2, "a call hung"
    reconnects = [daemon.reconnects() for daemon in started]
    assert max(reconnects) <= MAX_RECONNECTS, reconnects
    assert load.reconnects.count <= MAX_RECONNECTS
    measured = {
        "casts": len(casts),
        "events": len(events),
        "reads": len(load.of("read")),
        "writes failed": len(load.errors("write")),
        "daemon reconnects": reconnects,
        "caller reconnects": load.reconnects.count,
        "recovery": round(load.recovery(fault), 2),
        "longest call": round(load.longest("write"), 2),
    }
    print(json.dumps(measured))  # shown with -s; docs/cluster-faults.md has a run
    return measured


def leader_of(run: Run, queue: str) -> int:
    """The index of the node leading the quorum queue ``queue``."""
    node = next(node for node in run.cluster.nodes if node.running)
    listing = json.loads(
        node.ctl(
            "list_queues", "-p", run.vhost, "name", "leader", "--formatter", "json"
        )
    )
    leader = next(row["leader"] for row in listing if row["name"] == queue)
    return next(n.index for n in run.cluster.nodes if n.name == leader)


def test_killing_the_callers_node(run: Run):
    with under_load(run, [[2, 3, 1], [3, 2, 1]], [1, 2, 3]) as (started, load):
        fault = time.monotonic()
        run.cluster.node(1).kill()
        after_the_fault(load, fault)
        measured = check(run, started, load, fault)
    assert measured["recovery"] < MAX_RECOVERY
    # Replies to the callers of the dead node went to their private reply queues,
    # gone with it: no worker lost its connection over them.
    assert measured["daemon reconnects"] == [0, 0]


def test_killing_the_service_queues_leader(run: Run):
    with under_load(run, [[1, 2, 3], [2, 3, 1]], [3, 1, 2]) as (started, load):
        victim = leader_of(run, protocol.service_queue("journal"))
        fault = time.monotonic()
        run.cluster.node(victim).kill()
        after_the_fault(load, fault)
        measured = check(run, started, load, fault)
    assert measured["recovery"] < MAX_RECOVERY


def test_stop_app_on_a_workers_node(run: Run):
    with under_load(run, [[2, 1, 3], [3, 1, 2]], [1, 3, 2]) as (started, load):
        fault = time.monotonic()
        run.cluster.node(2).ctl("stop_app")
        after_the_fault(load, fault)
        check(run, started, load, fault)
    assert started[0].reconnects() >= 1  # it moved to another node
    assert started[1].reconnects() == 0


def test_freezing_the_callers_node_for_longer_than_the_heartbeat(run: Run):
    with under_load(run, [[2, 3, 1], [3, 2, 1]], [1, 2, 3]) as (started, load):
        fault = time.monotonic()
        run.cluster.node(1).freeze()
        try:
            time.sleep(FREEZE)  # the fault itself: silent for three heartbeats
        finally:
            run.cluster.node(1).thaw()
        after_the_fault(load, fault)
        check(run, started, load, fault)
    assert load.reconnects.count >= 1
    # What was in flight on the frozen connection failed once two heartbeats were
    # missed, not at the call's own timeout.
    caught = [
        outcome
        for outcome in load.of("write")
        if outcome.error is not None and outcome.started <= fault
    ]
    assert all(outcome.ended - fault < 2 * HEARTBEAT + 2 for outcome in caught)


def test_killing_a_classic_retry_queues_home_node(run: Run):
    """A failed cast waits in a retry queue on node 3; node 3 dies mid-run.

    The worker (on node 1) keeps its connection: copies the dead queue refuses go
    straight back to the service queue, and once the declare is refused, later
    ones do too. What waited in the queue on node 3 runs once node 3 is back.
    """
    origin = protocol.service_queue("journal")
    retry_queue = protocol.retry_queue(origin, 500)
    node3 = run.cluster.node(3)
    with amqp.Connection(
        f"127.0.0.1:{node3.port}",
        virtual_host=run.vhost,
        userid="guest",
        password="guest",
        connect_timeout=10,
    ) as connection:
        connection.channel().queue_declare(
            retry_queue,
            durable=True,
            auto_delete=False,
            arguments=protocol.retry_queue_arguments(origin, 500),
        )
    with under_load(run, [[1]], [1], queue_type="classic", cast_method="flaky") as (
        started,
        load,
    ):
        fault = time.monotonic()
        node3.kill()
        after_the_fault(load, fault)
        load.stop()
        run.cluster.restart(3)
        check(run, started, load, fault)
    assert started[0].reconnects() == 0
    log = started[0].text()
    assert "retry queue unavailable" in log or "did not take the copy" in log
