"""Backpressure: a deep queue stays in the broker, not in the worker's memory."""

from __future__ import annotations

import time

import orjson
import psutil
from kombu import Connection

from rpc import ClusterProxy, Config, protocol
from tests.integration.test_poison import queue_info
from tests.integration.test_supervisor import rpc_run, wait_for

REQUESTS = 100_000
MAX_WORKERS = 2
PUBLISH_TIME_LIMIT = 120.0
#: Growth of the worker's resident memory we accept while the queue is deep. Taking
#: the whole queue would cost well over 100 MB (100,000 messages and their objects).
RSS_GROWTH_LIMIT = 40 * 1024 * 1024


def publish_requests(broker_url: str, count: int) -> None:
    """Publish ``count`` slow requests as fast as a raw channel allows."""
    body = orjson.dumps({"args": [5.0], "kwargs": {"padding": "x" * 300}})
    headers = {protocol.HEADER_METHOD: "slow"}
    deadline = time.monotonic() + PUBLISH_TIME_LIMIT
    with Connection(broker_url) as connection:
        channel = connection.default_channel
        for sent in range(count):
            message = channel.prepare_message(
                body, None, "application/json", "utf-8", headers, {"delivery_mode": 1}
            )
            channel.basic_publish(
                message,
                exchange=protocol.RPC_EXCHANGE,
                routing_key=protocol.routing_key("faulty", "slow"),
            )
            if sent % 1000 == 0:
                assert time.monotonic() < deadline, f"published only {sent}"
        # A round trip on the channel: every publish before it has reached the broker.
        channel.basic_qos(0, 0, False)


def queue_depth(broker_url: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of the faulty service's queue."""
    ready, unacked = queue_info(
        broker_url, "messages_ready", "messages_unacknowledged"
    )["rpc-faulty"]
    return int(ready), int(unacked)


def test_a_deep_queue_neither_floods_the_worker_nor_its_memory(broker_url, tmp_path):
    log = tmp_path / "run.log"
    config = Config(broker_url=broker_url, default_timeout=60)
    with rpc_run(broker_url, log, "--max-workers", str(MAX_WORKERS)) as run:
        wait_for("the worker", lambda: "Ctrl+C stops" in log.read_text())
        worker = psutil.Process(run.pid)
        with ClusterProxy(config=config) as cluster:  # warm up every code path
            for _ in range(20):
                cluster.faulty.slow(0.0, padding="x" * 300)
        before = worker.memory_info().rss
        started = time.monotonic()
        publish_requests(broker_url, REQUESTS)
        print(f"published {REQUESTS} requests in {time.monotonic() - started:.1f}s")
        wait_for(
            "the worker to hold a full window",
            lambda: queue_depth(broker_url)[1] >= MAX_WORKERS,
        )
        samples = [queue_depth(broker_url) for _ in range(5)]
        after = worker.memory_info().rss
        assert run.poll() is None
    assert all(unacked <= MAX_WORKERS for _, unacked in samples), samples
    assert all(ready >= REQUESTS - 100 for ready, _ in samples), samples
    print(f"worker RSS {before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB")
    assert after - before < RSS_GROWTH_LIMIT, (before, after)
