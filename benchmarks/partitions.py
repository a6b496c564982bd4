"""``python -m benchmarks.partitions``: one queue against partitions, on a cluster.

Starts a private 3-node cluster (or uses ``--broker``, a ``;``-separated node list),
then for each partition count runs the same bounded load through quorum queues:
``--threads`` callers each making ``--calls`` calls, then as many confirmed casts,
served by ``--workers`` worker connections in this process. Prints messages per
second and where the queues' leaders are. Every phase stops after ``--limit``
seconds, finished or not.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from rpc import ClusterProxy, Config, ServiceRunner, protocol, rpc
from rpc.local_cluster import LocalCluster


def sink_service(name: str) -> tuple[type, threading.Semaphore]:
    """A service whose one method only counts: the broker is what is measured."""
    done = threading.Semaphore(0)

    class Sink:
        @rpc
        def put(self, item: int) -> int:
            done.release()
            return item

    Sink.name = name  # type: ignore[attr-defined]
    return Sink, done


@contextlib.contextmanager
def cluster_urls(
    broker: str | None,
) -> Iterator[tuple[tuple[str, ...], LocalCluster | None]]:
    if broker:
        yield tuple(broker.split(";")), None
        return
    with tempfile.TemporaryDirectory(prefix="rpc-bench-cluster-") as directory:
        cluster = LocalCluster(Path(directory), nodes=3)
        cluster.start()
        try:
            yield tuple(cluster.urls), cluster
        finally:
            cluster.stop()


def leaders(cluster: LocalCluster | None, prefix: str) -> dict[str, str]:
    if cluster is None:
        return {}
    listing = cluster.node(1).ctl(
        "list_queues", "name", "leader", "--formatter", "json"
    )
    return {
        row["name"]: row["leader"].split("@")[0].rsplit("-", 1)[-1]
        for row in json.loads(listing)
        if row["name"].startswith(prefix) and not row["name"].endswith("dead-letter")
    }


def phase(threads: int, count: int, limit: float, send) -> float:
    """Messages per second of ``threads`` threads each sending ``count``."""
    started = time.monotonic()
    deadline = started + limit

    def one(_: int) -> int:
        sent = 0
        for item in range(count):
            if time.monotonic() > deadline:
                break
            send(item)
            sent += 1
        return sent

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(one, range(threads)))
    return total / (time.monotonic() - started)


def measure(
    urls: tuple[str, ...],
    partitions: int,
    options: argparse.Namespace,
    cluster: LocalCluster | None,
) -> dict[str, object]:
    name = f"bench-sink-{uuid.uuid4().hex[:6]}"
    service, done = sink_service(name)
    config = Config(
        broker_urls=urls,
        queue_type="quorum",
        quorum_leader_locator="balanced",
        partitions={name: partitions} if partitions > 1 else {},
        max_workers=8,
        default_timeout=60,
    )
    runners = [ServiceRunner([service], config) for _ in range(options.workers)]
    for runner in runners:
        runner.start()
    try:
        with ClusterProxy(config=config) as proxy:
            method = getattr(proxy, name).put
            calls = phase(options.threads, options.calls, options.limit, method)
            casts = phase(options.threads, options.calls, options.limit, method.cast)
            sent = options.threads * options.calls
            drained = done.acquire  # the casts run after their confirms
            deadline = time.monotonic() + options.limit
            for _ in range(sent * 2):
                if not drained(timeout=max(deadline - time.monotonic(), 0)):
                    break
    finally:
        for runner in runners:
            runner.stop()
    return {
        "partitions": partitions,
        "calls_per_s": round(calls),
        "casts_per_s": round(casts),
        "leaders": leaders(cluster, protocol.service_queue(name)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.partitions")
    parser.add_argument(
        "--broker", help="';'-separated node URLs (default: a new cluster)"
    )
    parser.add_argument("--partitions", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--calls", type=int, default=300, help="per thread and phase")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--limit", type=float, default=60.0, help="seconds per phase")
    options = parser.parse_args(argv)
    with cluster_urls(options.broker) as (urls, cluster):
        for count in options.partitions:
            print(json.dumps(measure(urls, count, options, cluster)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
