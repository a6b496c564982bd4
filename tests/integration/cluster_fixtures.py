"""A private 3-node RabbitMQ cluster for the whole test session, and its faults.

Booting three nodes takes about a minute on two cores, so the cluster is made once
(session scope); a test that kills, stops or freezes a node brings it back before
the next test starts (``healthy_cluster``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rpc.local_cluster import LocalCluster

NODES = 3


@pytest.fixture(scope="session")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=NODES)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def healthy_cluster(rabbit_cluster: LocalCluster) -> Iterator[LocalCluster]:
    """The session's cluster, all nodes running; restored after the test."""
    _restore(rabbit_cluster)
    try:
        yield rabbit_cluster
    finally:
        _restore(rabbit_cluster)


def _restore(cluster: LocalCluster) -> None:
    for node in cluster.nodes:
        node.thaw()
    # One rabbitmqctl call when all is well: each takes seconds on a busy machine.
    running = set(cluster.running_nodes())
    if running == {node.name for node in cluster.nodes}:
        return
    for node in cluster.nodes:
        if node.name in running:
            continue
        if not node.running:
            cluster.restart(node.index)
        else:
            try:
                node.ctl("start_app")  # after stop_app
            except Exception:
                node.kill()
                cluster.restart(node.index)
    cluster.wait_running()
