"""The private cluster the cluster tests run on: it is one cluster, and it heals."""

from __future__ import annotations

import subprocess
import sys
import time

import kombu
import pytest

from rpc.local_cluster import LocalCluster
from tests.integration.daemons import PROJECT_ROOT, project_env

pytestmark = pytest.mark.cluster


def _declare_quorum(url: str, queue: str) -> None:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        channel.queue_declare(
            queue=queue,
            durable=True,
            auto_delete=False,
            arguments={"x-queue-type": "quorum"},
        )


def _message_count(url: str, queue: str) -> int:
    with kombu.Connection(url, connect_timeout=10) as connection:
        channel = connection.channel()
        return int(channel.queue_declare(queue=queue, passive=True).message_count)


def _eventual_message_count(
    url: str, queue: str, expected: int, within: float = 15.0
) -> int:
    """A quorum follower learns of a commit after its leader: ask until it agrees."""
    deadline = time.monotonic() + within
    while True:
        count = _message_count(url, queue)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def test_three_nodes_run_as_one_cluster(healthy_cluster: LocalCluster):
    names = {node.name for node in healthy_cluster.nodes}
    assert set(healthy_cluster.running_nodes()) == names
    assert len(set(healthy_cluster.urls)) == 3
    # A queue declared through node 1 is there through node 3.
    _declare_quorum(healthy_cluster.node(1).url, "harness-check")
    node_1 = kombu.Connection(
        healthy_cluster.node(1).url, transport_options={"confirm_publish": True}
    )
    with node_1 as connection:
        producer = connection.Producer()
        producer.publish(b"x", routing_key="harness-check", delivery_mode=2)
    assert _eventual_message_count(healthy_cluster.node(3).url, "harness-check", 1) == 1


def test_a_killed_node_leaves_and_comes_back(healthy_cluster: LocalCluster):
    victim = healthy_cluster.node(2)
    victim.kill()
    assert victim.name not in healthy_cluster.running_nodes()
    _declare_quorum(healthy_cluster.node(3).url, "harness-survives")
    healthy_cluster.restart(2)
    assert victim.name in healthy_cluster.running_nodes()
    assert _message_count(victim.url, "harness-survives") == 0


def test_the_cluster_command_prints_the_url_list_and_stops_on_sigterm(tmp_path):
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rpc",
            "broker",
            "cluster",
            "--nodes",
            "1",
            "--directory",
            str(tmp_path / "one"),
        ],
        cwd=PROJECT_ROOT,
        env=project_env("amqp://unused//"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()  # printed once the node runs
        assert line.startswith('export RPC_BROKER_URL="amqp://guest:guest@127.0.0.1:')
        url = line.split('"')[1]
        with kombu.Connection(url, connect_timeout=10) as connection:
            connection.connect()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert "stopping the cluster" in err
